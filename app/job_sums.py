"""SQL aggregates over jobs for the metrics (app.metrics): phase seconds out of the JSON timings, the per-kind
histogram sums of finished jobs (settled ones memoised per process), and the jobs that free answers spared."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, and_, case, cast, exists, func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from app.db import utcnow
from app.forget.enums import DispositionStatus, RequestStatus
from app.forget.tables import Disposition, ForgetRequest
from app.jobs.enums import FINAL as JOB_FINAL
from app.jobs.enums import JobKind, JobStatus
from app.jobs.tables import Job, JobRequest

PHASES = ("training", "scoring", "pruning", "unlearning", "auditing", "retraining", "certifying", "registering",
          "decoding")
MAX_ATTEMPTS = 4  # "unlearning", "unlearning#2" … "unlearning#4" are one observation (escalation ladder ≤ 3)
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
NO_ALGORITHM = "none"


def json_float(col: Any, *path: str) -> Any:
    """A number inside a JSON column (SQLite json_extract, Postgres ->> / #>>), cast to float."""
    return col[path if len(path) > 1 else path[0]].as_float()


def json_text(col: Any, *path: str) -> Any:
    return col[path if len(path) > 1 else path[0]].as_string()


def seconds_between(start: Any, end: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        return cast(func.extract("epoch", end - start), Float)
    return (func.julianday(end) - func.julianday(start)) * 86400.0  # SQLite stores ISO text


def phase_seconds(phase: str, job: Any = Job) -> Any:
    """A job's seconds in `phase`, its retry attempts (`phase#2` …) folded in; NULL when it has none."""
    first = json_float(job.timings, phase)
    retries = [func.coalesce(json_float(job.timings, f"{phase}#{n}"), 0.0) for n in range(2, MAX_ATTEMPTS + 1)]
    return sum(retries, first) if phase in ("unlearning", "auditing") else first


def spared_jobs(s: Session) -> float:
    """Requests answered entirely free, each valued at its lineage's first completed unlearning job."""
    free_only = dict(s.execute(
        select(ForgetRequest.model_id, func.count())
        .where(ForgetRequest.job_id.is_(None), ForgetRequest.status == RequestStatus.COMPLETED,
               exists().where(Disposition.request_id == ForgetRequest.id,
                              Disposition.disposition == DispositionStatus.FREE))
        .group_by(ForgetRequest.model_id)).all())
    if not free_only:
        return 0.0
    first = (select(Job.model_id, func.min(Job.finished_at).label("at"))
             .where(Job.kind == JobKind.UNLEARN, Job.status == JobStatus.COMPLETED, Job.model_id.in_(free_only))
             .group_by(Job.model_id).subquery())
    j = aliased(Job)
    cost = sum((func.coalesce(phase_seconds(p, j), 0.0) for p in ("unlearning", "auditing", "registering")),
               literal(0.0))
    per_model = dict(s.execute(
        select(j.model_id, func.max(cost))
        .join(first, and_(first.c.model_id == j.model_id, first.c.at == j.finished_at))
        .where(j.kind == JobKind.UNLEARN, j.status == JobStatus.COMPLETED).group_by(j.model_id)).all())
    return sum(n * float(per_model.get(m) or 0.0) for m, n in free_only.items())


GroupSums = dict[tuple[str, str, str], list[float]]
# Jobs that finished over an hour ago never change again (a job's row is final once it finished): their sums are
# memoised per process and per database, checked on every scrape by a cheap fingerprint (count, latest finish)
# that a truncated or restored database changes. Only recent jobs have their JSON read on every scrape.
SETTLED_AFTER = timedelta(hours=1)
_settled: dict[str, tuple[datetime, tuple[Any, ...], GroupSums]] = {}


def _group_sums(s: Session, dialect: str, where: Any) -> GroupSums:
    """One aggregate over finished jobs matching `where`: per (kind, status, algorithm) the bucket counts,
    count and sum of the latency and of each phase, then the savings and pruned points."""
    done_unlearn = and_(Job.kind == JobKind.UNLEARN, Job.status == JobStatus.COMPLETED)

    def unlearn_only(expr: Any) -> Any:
        return case((done_unlearn, func.coalesce(expr, 0.0)), else_=0.0)

    free_in_job = (select(func.count()).select_from(Disposition)
                   .join(JobRequest, JobRequest.request_id == Disposition.request_id)
                   .where(JobRequest.job_id == Job.id, Disposition.disposition == DispositionStatus.FREE)
                   .correlate(Job).scalar_subquery())
    # Each JSON field is extracted once per row into the materialised CTE; the outer query aggregates.
    rows = select(
        Job.kind.label("kind"), Job.status.label("status"),
        func.coalesce(json_text(Job.params, "algorithm"), literal(NO_ALGORITHM)).label("algorithm"),
        case((Job.status == JobStatus.COMPLETED, seconds_between(Job.created_at, Job.finished_at, dialect)),
             else_=None).label("latency"),
        *[phase_seconds(p).label(p) for p in PHASES],
        unlearn_only(json_float(Job.result, "metrics", "n_forget_kept")).label("kept_f"),
        unlearn_only(json_float(Job.result, "metrics", "n_retain_kept")).label("kept_r"),
        unlearn_only(json_float(Job.result, "pruned", "forget", "n")).label("pruned_f"),
        unlearn_only(json_float(Job.result, "pruned", "retain", "n")).label("pruned_r"),
        case((done_unlearn, free_in_job), else_=0).label("free"),
    ).where(Job.status.in_(JOB_FINAL), where).cte("finished").prefix_with("MATERIALIZED")
    per_point = func.coalesce(rows.c.unlearning, 0.0) / func.nullif(rows.c.kept_f + rows.c.kept_r, 0.0)

    def hist(col: Any) -> list[Any]:
        return [func.sum(case((col <= b, 1), else_=0)) for b in BUCKETS] + [func.count(col), func.sum(col)]

    cols = [rows.c.latency, *[rows.c[p] for p in PHASES]]
    agg = select(rows.c.kind, rows.c.status, rows.c.algorithm, *[x for c in cols for x in hist(c)],
                 func.sum(per_point * (rows.c.pruned_f + rows.c.pruned_r)), func.sum(per_point * rows.c.free),
                 func.sum(rows.c.pruned_f), func.sum(rows.c.pruned_r)
                 ).group_by(rows.c.kind, rows.c.status, rows.c.algorithm)
    return {(r[0], r[1], r[2]): [float(v or 0) for v in r[3:]] for r in s.execute(agg)}


def finished_job_sums(s: Session, dialect: str) -> GroupSums:
    """_group_sums of every finished job: the memoised settled part plus the recent part."""
    horizon = utcnow().replace(minute=0, second=0, microsecond=0) - SETTLED_AFTER
    old = Job.finished_at < horizon
    fingerprint = tuple(s.execute(select(func.count(), func.max(Job.finished_at))
                                  .where(Job.status.in_(JOB_FINAL), old)).one())
    key = s.get_bind().url.render_as_string(hide_password=True)
    cached = _settled.get(key)
    if cached is None or cached[:2] != (horizon, fingerprint):
        cached = (horizon, fingerprint, _group_sums(s, dialect, old) if fingerprint[0] else {})
        _settled[key] = cached
    total = {k: list(v) for k, v in cached[2].items()}
    for k, v in _group_sums(s, dialect, or_(Job.finished_at.is_(None), Job.finished_at >= horizon)).items():
        total[k] = [a + b for a, b in zip(total[k], v, strict=True)] if k in total else v
    return total
