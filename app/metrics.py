"""Prometheus metrics, computed from the ledger database at scrape time: multiprocess-safe by construction.

Nothing is counted in process memory. A scrape of `GET /metrics` opens one short read-only session and
aggregates the rows every process writes (requests, dispositions, jobs and their phase timings, audits,
influence runs), so the API processes (any number of uvicorn workers or replicas) and the Celery workers
share one truth: whichever process answers reports the same numbers, and a worker needs no endpoint of its
own because its jobs, phases, audits and scores are rows. prometheus_client's multiprocess mode (and its
shared directory) is therefore not needed. Scrape one API target: replicas answer identically, so scraping
each of them would double every sum.

Counters are monotone because the rows they count are never deleted and are counted only in a final state
(requests completed|failed|cancelled, dispositions other than pending, jobs completed|failed|cancelled; a
finished job's timings and result never change). What is not final yet is a gauge (open requests, pending
points, queue). Label values are bounded: fixed vocabularies, algorithms of the engine, scorer methods;
never model, tenant or point names (the endpoint has no auth).

Seconds saved are estimates against the unpruned run (the papers' baseline: the same algorithm on the whole
forget and retain sets), linear in the points the unlearning phase processes. For a completed unlearning job
with unlearning seconds u (all attempts), kept forget/retain points k_f + k_r, pruned p_f + p_r, and F free
points among the requests it served:
  pruning: u * (p_f + p_r) / (k_f + k_r)
  free:    u * F / (k_f + k_r)
A request answered entirely free ran no job at all; it saved one unlearning job of its lineage, valued at the
unlearning + auditing + registering seconds of the lineage's first completed unlearning job (0 until there
is one), a value that never changes afterwards.

Query cost is bounded: every figure is an aggregate computed in SQL (one pass over jobs for the histograms,
through a materialised CTE so each JSON field is extracted once per row); only grouped rows reach Python.
The sums of jobs that finished over an hour ago are memoised per process (finished jobs never change; a
count/latest-finish fingerprint detects a truncated or restored database), so a steady scrape reads the JSON
of recent jobs only: 50,000 finished jobs scrape in ~0.1 s (SQLite) / ~0.2 s (Postgres), ~1 s when recomputed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app import job_sums
from app.db import session_scope, utcnow
from app.evidence import service as evidence
from app.evidence.enums import PoolStatus
from app.evidence.tables import ReferencePool
from app.forget.enums import ENDED as REQUEST_ENDED
from app.forget.enums import DispositionStatus, RequestStatus
from app.forget.tables import Disposition, ForgetRequest
from app.job_sums import BUCKETS, NO_ALGORITHM, PHASES
from app.jobs.enums import FINAL as JOB_ENDED
from app.jobs.enums import JobKind, JobStatus, Verdict
from app.jobs.tables import Audit, Job
from app.registry.enums import RunStatus
from app.registry.schemas import ALGORITHMS, SCORERS
from app.registry.tables import InfluenceRun, Model, Version
from app.settings import get_settings

# Fixed vocabularies (DESIGN.md "Statuses"); values outside them are folded into "other".
JOB_KINDS = tuple(JobKind)
VERDICTS = tuple(Verdict)
JOB_FINAL = JOB_ENDED
REQUEST_FINAL = REQUEST_ENDED
DISPOSITIONS = tuple(d for d in DispositionStatus if d != DispositionStatus.PENDING)
# Phases each kind of job records in Job.timings (workers/jobs/), and the attempts folded into one.
KIND_PHASES = {
    JobKind.TRAIN: ("training", "registering"),
    JobKind.SCORE: ("scoring",),
    JobKind.CALIBRATE: ("scoring", "retraining", "registering"),
    JobKind.UNLEARN: ("scoring", "pruning", "unlearning", "auditing", "registering"),
    JobKind.REFERENCE: ("training", "certifying", "registering"),
    JobKind.VALIDATE: ("decoding",),
}

_LABEL = re.compile(r"^[a-z0-9_]{1,32}$")


def _count_by(s: Session, column: Any) -> dict[str, int]:
    """How many rows hold each value of `column`."""
    return {value: int(n) for value, n in s.execute(select(column, func.count()).group_by(column))}


def _bounded(value: Any, allowed: Iterable[str]) -> str:
    value = str(value) if value is not None else ""
    return value if value in set(allowed) and _LABEL.match(value) else "other"


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands back naive UTC


# ----------------------------------------------------------------------------- the collector

class LetheCollector(Collector):
    """Every metric of Lethe, aggregated from the database on each scrape."""

    def describe(self) -> Iterator[Metric]:
        """Names and types without touching the database (registration, the docs, the dashboard test)."""
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        with session_scope(readonly=True) as s:
            families = self._families()
            self._fill(s, families)
        families["lethe_scrape_seconds"].add_metric([], time.perf_counter() - began)
        yield from families.values()

    # families ---------------------------------------------------------------------------------------

    @staticmethod
    def _families() -> dict[str, Metric]:
        fams: list[Metric] = [
            CounterMetricFamily("lethe_forget_requests", "Forget requests that reached a final status, by outcome.",
                                labels=["outcome"]),
            GaugeMetricFamily("lethe_forget_requests_open", "Forget requests accepted and not yet final."),
            CounterMetricFamily("lethe_forget_points", "Per-point dispositions in a final state "
                                "(free, pruned, unlearned, already_forgotten, failed, cancelled).",
                                labels=["disposition"]),
            GaugeMetricFamily("lethe_forget_points_pending", "Points waiting for an unlearning job."),
            CounterMetricFamily("lethe_jobs", "Jobs that finished, by kind and final status.",
                                labels=["kind", "status"]),
            GaugeMetricFamily("lethe_jobs_running", "Jobs running now, by kind.", labels=["kind"]),
            GaugeMetricFamily("lethe_queue_depth", "Jobs queued and not started, by kind.", labels=["kind"]),
            GaugeMetricFamily("lethe_queue_oldest_age_seconds", "Age of the oldest queued job (0 when none)."),
            HistogramMetricFamily("lethe_job_latency_seconds", "Completed jobs: seconds from queued to finished.",
                                  labels=["kind"]),
            HistogramMetricFamily("lethe_job_phase_seconds", "Seconds of each phase of finished jobs "
                                  "(retry attempts folded in); algorithm: the unlearning algorithm requested.",
                                  labels=["kind", "phase", "algorithm"]),
            CounterMetricFamily("lethe_compute_seconds", "Compute seconds spent in the recorded phases of "
                                "finished jobs, by kind.", labels=["kind"]),
            CounterMetricFamily("lethe_saved_seconds", "Estimated unlearning seconds saved against the unpruned "
                                "run, by source (pruning, free).", labels=["source"]),
            CounterMetricFamily("lethe_pruned_points", "Points pruned by completed unlearning jobs, by set "
                                "(forget: need no unlearning; retain: left out of the repair).", labels=["set"]),
            CounterMetricFamily("lethe_audits", "Audits of unlearned candidates, by algorithm and verdict "
                                "(passed | failed | inconclusive); retrains that fail are the audit's false "
                                "alarms.", labels=["algorithm", "result"]),
            GaugeMetricFamily("lethe_reference_pools", "Reference pools (the evidence instrument), by status; "
                              "valid = completed and not stale.", labels=["status"]),
            GaugeMetricFamily("lethe_certified_free_points", "Points in the certified free sets of the valid "
                              "pools (measured unidentifiable as a group)."),
            CounterMetricFamily("lethe_free_points", "Points answered free, by basis (measured by a pool, or "
                                "provisional: a score rule, nothing measured).", labels=["basis"]),
            GaugeMetricFamily("lethe_mia_auc", "Informational loss-MIA AUC (forget vs test) of the forgotten points "
                              "on the current versions that carry an audit (min, mean, max over models); it "
                              "decides nothing.", labels=["stat"]),
            GaugeMetricFamily("lethe_mia_auc_threshold", "The audit's MIA AUC bound (LETHE_AUDIT_MIA_AUC_MAX)."),
            GaugeMetricFamily("lethe_audited_models", "Models whose current version carries an audited MIA AUC."),
            CounterMetricFamily("lethe_scored_points", "Points whose self-influence was computed, by method.",
                                labels=["method"]),
            CounterMetricFamily("lethe_scoring_seconds", "Seconds spent computing self-influence, by method.",
                                labels=["method"]),
            GaugeMetricFamily("lethe_scrape_seconds", "Seconds this scrape's database aggregation took."),
        ]
        return {f.name: f for f in fams}

    # values -----------------------------------------------------------------------------------------

    def _fill(self, s: Session, f: dict[str, Metric]) -> None:
        dialect = s.get_bind().dialect.name
        self._by_status(s, ForgetRequest.status, final=(REQUEST_FINAL, f["lethe_forget_requests"]),
                        waiting=(RequestStatus.ACCEPTED, f["lethe_forget_requests_open"]))
        self._by_status(s, Disposition.disposition, final=(DISPOSITIONS, f["lethe_forget_points"]),
                        waiting=(DispositionStatus.PENDING, f["lethe_forget_points_pending"]))
        self._jobs(s, f)
        self._job_rows(s, f, dialect)
        self._audits(s, f)
        self._scoring(s, f)

    @staticmethod
    def _by_status(s: Session, column: Any, *, final: tuple[Iterable[str], Metric],
                   waiting: tuple[str, Metric]) -> None:
        """How many rows hold each final value of `column` (final[1] labelled by it), and how many wait (the
        gauge waiting[1], rows holding waiting[0])."""
        counts = _count_by(s, column)
        for value in final[0]:
            final[1].add_metric([value], counts.get(value, 0))
        waiting[1].add_metric([], counts.get(waiting[0], 0))

    @staticmethod
    def _jobs(s: Session, f: dict[str, Metric]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for kind, status, n in s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)):
            key = (_bounded(kind, JOB_KINDS), status)
            counts[key] = counts.get(key, 0) + int(n)
        kinds = JOB_KINDS + tuple(sorted({k for k, _ in counts if k not in JOB_KINDS}))
        for kind in kinds:
            for status in JOB_FINAL:
                f["lethe_jobs"].add_metric([kind, status], counts.get((kind, status), 0))
            f["lethe_jobs_running"].add_metric([kind], counts.get((kind, "running"), 0))
            f["lethe_queue_depth"].add_metric([kind], counts.get((kind, "queued"), 0))
        oldest = _as_utc(s.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED)))
        f["lethe_queue_oldest_age_seconds"].add_metric(
            [], max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0)

    @staticmethod
    def _job_rows(s: Session, f: dict[str, Metric], dialect: str) -> None:
        """Histograms, compute seconds, savings and pruned points, from the grouped sums of finished jobs."""
        width = len(BUCKETS) + 2
        zero = [0.0] * width
        latency: dict[str, list[float]] = {k: list(zero) for k in JOB_KINDS}
        phases: dict[tuple[str, str, str], list[float]] = {}
        for kind, kind_phases in KIND_PHASES.items():
            for algorithm in (ALGORITHMS if kind == JobKind.UNLEARN else (NO_ALGORITHM,)):
                for p in kind_phases:
                    phases[(kind, p, algorithm)] = list(zero)
        compute = {k: 0.0 for k in JOB_KINDS}
        saved = {"pruning": 0.0, "free": job_sums.spared_jobs(s)}
        pruned = {"forget": 0.0, "retain": 0.0}

        def add(acc: list[float], values: list[float]) -> None:
            for i, v in enumerate(values):
                acc[i] += v

        for (kind, status, algorithm), values in job_sums.finished_job_sums(s, dialect).items():
            kind = _bounded(kind, JOB_KINDS)
            algorithm = _bounded(algorithm, ALGORITHMS) if kind == JobKind.UNLEARN else NO_ALGORITHM
            if status == JobStatus.COMPLETED:
                add(latency.setdefault(kind, list(zero)), values[:width])
            for i, p in enumerate(PHASES, start=1):
                block = values[i * width:(i + 1) * width]
                if not block[-2]:  # no job of this group recorded the phase
                    continue
                add(phases.setdefault((kind, p, algorithm), list(zero)), block)
                compute[kind] = compute.get(kind, 0.0) + block[-1]
            save_p, save_f, pruned_f, pruned_r = values[(len(PHASES) + 1) * width:]
            saved["pruning"] += save_p
            saved["free"] += save_f
            pruned["forget"] += pruned_f
            pruned["retain"] += pruned_r

        def emit(fam: Metric, labels: list[str], acc: list[float]) -> None:
            cumulative = [(repr(b), acc[i]) for i, b in enumerate(BUCKETS)] + [("+Inf", acc[-2])]
            fam.add_metric(labels, cumulative, acc[-1])

        for kind, acc in latency.items():
            emit(f["lethe_job_latency_seconds"], [kind], acc)
        for (kind, p, algorithm), acc in sorted(phases.items()):
            emit(f["lethe_job_phase_seconds"], [kind, p, algorithm], acc)
        for kind, v in compute.items():
            f["lethe_compute_seconds"].add_metric([kind], v)
        for source, v in saved.items():
            f["lethe_saved_seconds"].add_metric([source], v)
        for name, v in pruned.items():
            f["lethe_pruned_points"].add_metric([name], v)

    @staticmethod
    def _audits(s: Session, f: dict[str, Metric]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for algorithm, verdict, passed, n in s.execute(
                select(Audit.algorithm, Audit.verdict, Audit.passed, func.count())
                .group_by(Audit.algorithm, Audit.verdict, Audit.passed)):
            # audits recorded before verdicts existed were pass/fail only
            result = verdict if verdict in VERDICTS else (Verdict.PASSED if passed else Verdict.FAILED)
            key = (_bounded(algorithm, ALGORITHMS), result)
            counts[key] = counts.get(key, 0) + int(n)
        for algorithm in ALGORITHMS + tuple(sorted({a for a, _ in counts if a not in ALGORITHMS})):
            for result in VERDICTS:
                f["lethe_audits"].add_metric([algorithm, result], counts.get((algorithm, result), 0))
        by_status = dict(s.execute(select(ReferencePool.status, func.count()).group_by(ReferencePool.status)).all())
        valid, certified = 0, 0
        for model in s.scalars(select(Model).where(Model.id.in_(select(ReferencePool.model_id).where(
                ReferencePool.status == PoolStatus.COMPLETED)))):
            st = evidence.state(s, model=model)
            if st.valid and st.pool is not None:
                valid += 1
                certified += st.pool.n_certified or 0
        for status in PoolStatus:
            f["lethe_reference_pools"].add_metric([status], int(by_status.get(status, 0)))
        f["lethe_reference_pools"].add_metric(["valid"], valid)
        f["lethe_certified_free_points"].add_metric([], certified)
        measured = s.scalar(select(func.count()).select_from(Disposition).where(
            Disposition.disposition == DispositionStatus.FREE, Disposition.pool_id.is_not(None))) or 0
        total_free = s.scalar(select(func.count()).select_from(Disposition).where(
            Disposition.disposition == DispositionStatus.FREE)) or 0
        f["lethe_free_points"].add_metric(["measured"], int(measured))
        f["lethe_free_points"].add_metric(["provisional"], int(total_free - measured))
        auc = job_sums.json_float(Version.metrics, "audit", "mia", "auc")
        lo, mean, hi, n = s.execute(
            select(func.min(auc), func.avg(auc), func.max(auc), func.count(auc))
            .select_from(Model).join(Version, and_(Version.model_id == Model.id,
                                                   Version.number == Model.current_version))).one()
        if n:
            for stat, v in (("min", lo), ("mean", mean), ("max", hi)):
                f["lethe_mia_auc"].add_metric([stat], float(v))
        f["lethe_audited_models"].add_metric([], int(n or 0))
        f["lethe_mia_auc_threshold"].add_metric([], get_settings().audit_mia_auc_max)

    @staticmethod
    def _scoring(s: Session, f: dict[str, Metric]) -> None:
        points = {m: 0.0 for m in SCORERS}
        seconds = {m: 0.0 for m in SCORERS}
        for method, n, secs in s.execute(
                select(InfluenceRun.method, func.sum(InfluenceRun.n),
                       func.sum(job_sums.json_float(InfluenceRun.summary, "seconds")))
                .where(InfluenceRun.status == RunStatus.COMPLETED).group_by(InfluenceRun.method)):
            m = _bounded(method, SCORERS)
            points[m] = points.get(m, 0.0) + float(n or 0)
            seconds[m] = seconds.get(m, 0.0) + float(secs or 0)
        for m in points:
            f["lethe_scored_points"].add_metric([m], points[m])
            f["lethe_scoring_seconds"].add_metric([m], seconds[m])


REGISTRY = CollectorRegistry(auto_describe=True)
_COLLECTORS: dict[type, Collector] = {}


def register(collector: Collector) -> None:
    """Serve `collector` at GET /metrics, once per process per kind: each domain's collector registers itself
    when its module is imported (app.opendsr.metrics does)."""
    if type(collector) not in _COLLECTORS:
        REGISTRY.register(collector)
        _COLLECTORS[type(collector)] = collector


COLLECTOR = LetheCollector()
register(COLLECTOR)


def exported_names() -> set[str]:
    """Every sample name a scrape can contain (counters' _total, histograms' _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    families = [fam for c in _COLLECTORS.values() for fam in c.describe()]
    return {fam.name + sfx for fam in families for sfx in suffixes[fam.type]}


router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics() -> Response:
    """Every Lethe metric, aggregated from the database now (no auth: no names of models or tenants)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
