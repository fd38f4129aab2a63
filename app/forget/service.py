"""POST /forget: validate, triage, tombstone, record, and queue the rest — in one transaction."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import idempotency
from app.datasets import service as datasets
from app.datasets.tables import Point
from app.db import new_id, utcnow
from app.errors import Conflict, NotFound, Unprocessable, closest, did_you_mean
from app.evidence import service as evidence
from app.forget.schemas import ForgetCreate, PointDisposition, RequestRead, RequestSummary
from app.forget.tables import Disposition, ForgetRequest
from app.forget.triage import Candidate, triage
from app.identity import keyed_hash
from app.jobs import service as jobs
from app.jobs.tables import Job, JobRequest
from app.ledger import service as ledger
from app.registry import service as registry
from app.registry.schemas import ALGORITHMS
from app.registry.tables import Model, Version
from app.settings import get_settings
from app.webhooks import service as webhooks
from workers.engine.params import validate_params

FINAL = ("free", "pruned", "unlearned")
LIVE = FINAL + ("pending",)
CHUNK = 10_000


def body_hash(body: ForgetCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _chunks(values: list[Any]) -> list[list[Any]]:
    return [values[i:i + CHUNK] for i in range(0, len(values), CHUNK)]


def _points_by_id(session: Session, *, dataset_id: str, point_ids: list[str]) -> dict[str, Point]:
    found: dict[str, Point] = {}
    for chunk in _chunks(sorted(set(point_ids))):
        for p in session.scalars(select(Point).where(Point.dataset_id == dataset_id, Point.point_id.in_(chunk))):
            found[p.point_id] = p
    return found


def _points_by_subject(session: Session, *, dataset_id: str, subject_ids: list[str]) -> tuple[list[Point], list[str]]:
    hashes = {keyed_hash(s): s for s in dict.fromkeys(subject_ids)}
    points: list[Point] = []
    seen: set[str] = set()
    for chunk in _chunks(list(hashes)):
        for p in session.scalars(select(Point).where(Point.dataset_id == dataset_id, Point.subject_hash.in_(chunk))):
            points.append(p)
            seen.add(p.subject_hash or "")
    return points, [h for h in hashes if h not in seen]  # keyed hashes: a subject id is never stored in clear


def _live_dispositions(session: Session, *, model_id: str, point_pks: list[int]) -> dict[int, Disposition]:
    """Each point's strongest disposition in this lineage: final beats pending."""
    out: dict[int, Disposition] = {}
    for chunk in _chunks(point_pks):
        for d in session.scalars(select(Disposition).where(Disposition.model_id == model_id,
                                                           Disposition.point_pk.in_(chunk),
                                                           Disposition.disposition.in_(LIVE))):
            if d.point_pk not in out or d.disposition in FINAL:
                out[d.point_pk] = d
    return out


def _deciding_scores(session: Session, *, model: Model, version: Version) -> tuple[Version | None, Any]:
    """Scores of the current version, else of its nearest scored ancestor (they decide until ours land)."""
    method = model.policy.get("scorer", "gradnorm")
    v: Version | None = version
    while v is not None:
        run = registry.influence_run(session, version=v, method=method)
        scores = registry.load_scores(run) if run else None
        if scores is not None and v.threshold is not None:
            return v, scores
        v = session.get(Version, v.parent_id) if v.parent_id else None
    return None, None


def validate_algorithm(algorithm: str | None, params: dict[str, Any] | None, policy: dict[str, Any],
                       architecture: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The request's algorithm and params, defaulting to the model's policy; 422 when unknown or when it cannot
    apply to the model's architecture (naming why)."""
    algo = algorithm or policy.get("algorithm", "finetune")
    if algo not in ALGORITHMS:
        suggestions = closest(algo, ALGORITHMS)
        raise Unprocessable(f"unknown algorithm '{algo}'{did_you_mean(suggestions)} (one of {list(ALGORITHMS)})",
                            choices=list(ALGORITHMS), suggestions=suggestions)
    if architecture is not None:
        registry.check_applies(architecture, [algo])
    if params is None:
        params = dict(policy.get("params") or {}) if algo == policy.get("algorithm") else {}
    try:
        return algo, validate_params(algo, params)
    except ValueError as exc:
        raise Unprocessable(str(exc)) from exc


def _keyed(session: Session, *, tenant_id: str, idempotency_key: str) -> ForgetRequest | None:
    return session.scalar(select(ForgetRequest).where(ForgetRequest.tenant_id == tenant_id,
                                                      ForgetRequest.idempotency_key == idempotency_key))


def _as_given(response: dict[str, Any], body: ForgetCreate) -> dict[str, Any]:
    """The caller's own answer names its unknown subjects as it gave them; only their keyed hashes are stored
    (`unknown_subjects`), so the clear ids are recovered from the request body, never from storage."""
    unknown = set(response.get("unknown_subjects") or [])
    given = [s for s in dict.fromkeys(body.subject_ids) if keyed_hash(s) in unknown] if unknown else []
    return response | {"unknown_subject_ids": given}


def _answer(prior: ForgetRequest | None, body: ForgetCreate) -> tuple[dict[str, Any], int] | None:
    """The first answer given under a key (409 if the body differs), or None (new or expired key)."""
    if prior is None or idempotency.expired(prior.created_at):
        return None
    if prior.body_hash != body_hash(body):
        raise Conflict("this Idempotency-Key was used with a different body")
    return _as_given(prior.response["body"], body), prior.response["status"]


def replay(session: Session, *, tenant_id: str, body: ForgetCreate, idempotency_key: str) -> tuple[
        dict[str, Any], int] | None:
    """The first answer given for this Idempotency-Key (409 if the body differs), or None (new or expired key)."""
    return _answer(_keyed(session, tenant_id=tenant_id, idempotency_key=idempotency_key), body)


def submit(session: Session, *, tenant_id: str, body: ForgetCreate, idempotency_key: str | None) -> tuple[
        dict[str, Any], int]:
    """Handle a forget request; returns (response body, HTTP status). The caller commits."""
    digest = body_hash(body)
    if idempotency_key:
        prior = _keyed(session, tenant_id=tenant_id, idempotency_key=idempotency_key)
        answer = _answer(prior, body)
        if answer is not None:
            return answer
        if prior is not None:  # expired: the key may be used again; the old request keeps its record, not the key
            prior.idempotency_key = None
            session.flush()
    ledger.lock_chain(session, tenant_id=tenant_id)
    model, number = registry.resolve_ref(session, tenant_id=tenant_id, target=body.model)
    if model.current_version is None:
        raise Conflict(f"model '{model.name}' has no version yet")
    if number is not None and number != model.current_version:
        current = registry.ref(model, model.current_version)
        raise Conflict(f"'{body.model}' is not the current version ({current}): deletions apply to what is served; "
                       f"name '{model.name}' or '{current}'", current=current)
    algorithm, params = validate_algorithm(body.algorithm, body.params, model.policy, model.architecture)
    if body.callback_url:
        webhooks.check_url(str(body.callback_url))

    by_id = _points_by_id(session, dataset_id=model.dataset_id, point_ids=body.point_ids)
    unknown = sorted(set(body.point_ids) - set(by_id))
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise Unprocessable(f"{len(unknown)} point id(s) are not in this model's dataset: {shown}",
                            unknown_point_ids=unknown[:1000])
    subject_points, unknown_subjects = _points_by_subject(session, dataset_id=model.dataset_id,
                                                          subject_ids=body.subject_ids)
    points = {p.id: p for p in list(by_id.values()) + subject_points}

    request = _open(session, model=model, points=list(points.values()), body=body, algorithm=algorithm,
                    params=params, unknown_subjects=unknown_subjects, linked_from=None,
                    idempotency=(idempotency_key, digest))
    linked = []
    for other in registry.models_on_dataset(session, tenant_id=tenant_id, dataset_id=model.dataset_id):
        if other.id != model.id and other.current_version is not None and points:
            lalgo, lparams = validate_algorithm(None, None, other.policy, other.architecture)
            linked.append(_open(session, model=other, points=list(points.values()), body=body, algorithm=lalgo,
                                params=lparams, unknown_subjects=[], linked_from=request.id))
    if get_settings().erasure_interval == 0:  # else the relay's sweep erases them, batched
        datasets.erase_cleared(session, dataset_id=model.dataset_id)
    response, status = request.response["body"], request.response["status"]
    if linked:  # (else the stored answer already says "linked_requests": [], and no UPDATE is needed)
        response = response | {"linked_requests": [r.id for r in linked]}
        request.response = {"body": response, "status": status}
    session.flush()
    return _as_given(response, body), status


def _open(session: Session, *, model: Model, points: list[Point], body: ForgetCreate, algorithm: str,
          params: dict[str, Any], unknown_subjects: list[str], linked_from: str | None,
          idempotency: tuple[str | None, str | None] = (None, None)) -> ForgetRequest:
    """One lineage's request: dispositions, tombstones, ledger entries, and its job if needed.

    The request row is built whole before anything flushes it (its id is drawn here), so a free answer
    costs one INSERT, not an INSERT and UPDATEs."""
    version = registry.get_version(session, model=model, number=model.current_version)
    existing = _live_dispositions(session, model_id=model.id, point_pks=[p.id for p in points])
    already = [p for p in points if p.id in existing and existing[p.id].disposition in FINAL]
    todo = [p for p in points if p not in already]
    fresh = [p for p in todo if p.id not in existing]  # points pending in an earlier request stay with its job
    measured = evidence.triage(session, model=model, candidates={p.id: p.row for p in fresh})
    scored_by, scores = None, None
    if measured.basis == "unmeasured" and get_settings().free_provisional:
        scored_by, scores = _deciding_scores(session, model=model, version=version)
        candidates = [Candidate(key=p.id, point_id=p.point_id,
                                score=float(scores[p.row]) if scores is not None else None) for p in fresh]
        budget_left = (scored_by.budget or 0) - model.free_spent if scored_by is not None else 0
        chosen, _ = triage(candidates, threshold=scored_by.threshold if scored_by else None, budget_left=budget_left)
        measured = evidence.Triage("provisional", free={c.key for c in chosen}, evidence={
            "free_basis": "provisional", "why": measured.evidence.get("why"),
            "rule": f"influence score below the {get_settings().free_quantile:.0%} quantile of "
                    f"{registry.ref(model, scored_by.number) if scored_by else 'no scored version'}: NOT measured"})
    free_keys = measured.free
    free = sorted((p for p in fresh if p.id in free_keys), key=lambda p: p.point_id)
    pending = [p for p in todo if p.id not in free_keys]

    # The request row is built whole (id, answer) before it is added: a free answer costs one INSERT.
    request_id, opened = new_id(), utcnow()  # one instant: an answer given at once completes as it is created
    body_out = {
        "request_id": request_id, "status": "accepted" if pending else "completed", "model": model.name,
        "version": version.number, "ref": registry.ref(model, version.number),
        "free": [p.point_id for p in free], "pending": sorted(p.point_id for p in pending),
        "already_forgotten": sorted(p.point_id for p in already), "unknown_subjects": unknown_subjects,
        "job_id": None, "linked_requests": [],
        "free_basis": measured.basis, "pool_id": measured.pool_id,
        "scores_from": registry.ref(model, scored_by.number) if scored_by else None,
    }
    request = ForgetRequest(id=request_id, tenant_id=model.tenant_id, model_id=model.id, version=version.number,
                            status=body_out["status"], reason=body.reason,
                            requested_by_hash=keyed_hash(body.requested_by),
                            callback_url=str(body.callback_url) if body.callback_url else None,
                            algorithm=algorithm, params=params, linked_from=linked_from,
                            unknown_subjects=unknown_subjects,
                            response={"body": body_out, "status": 202 if pending else 200},
                            idempotency_key=idempotency[0], body_hash=idempotency[1], evidence=measured.evidence,
                            created_at=opened, completed_at=None if pending else opened)
    session.add(request)
    session.flush()  # before the rows that refer to it (the unit of work orders by relationships, not FKs)
    now = utcnow()
    score_of = {p.id: float(scores[p.row]) for p in fresh} if scores is not None else {}
    rows = [Disposition(request_id=request.id, model_id=model.id, point_pk=p.id, point_id=p.point_id,
                        disposition=d, version=v, score=score_of.get(p.id),
                        separation=measured.separation.get(p.id),
                        pool_id=measured.pool_id if p.id in measured.separation else None)
            for p, d, v in ([(p, "already_forgotten", existing[p.id].version) for p in already]
                            + [(p, "free", version.number) for p in todo if p.id in free_keys]
                            + [(p, "pending", None) for p in pending])]
    session.add_all(rows)
    for p in points:
        p.tombstoned_at = p.tombstoned_at or now
    model.free_spent += len(free)

    ledger.append(session, tenant_id=model.tenant_id, event="request.received", subject_type="request",
                  subject_id=request.id, data={
                      "model": model.name, "ref": registry.ref(model, version.number), "reason": body.reason,
                      "requested_by": request.requested_by_hash, "n_points": len(points),
                      "n_unknown_subjects": len(unknown_subjects), "unknown_subjects": unknown_subjects,
                      "linked_from": linked_from,
                      "algorithm": algorithm, "free_basis": measured.basis, "pool_id": measured.pool_id,
                      "evidence_sha256": evidence.digest(measured.evidence, [])})
    if free:
        points_evidence = [{"point_id": p.point_id, "separation": measured.separation.get(p.id)} for p in free]
        ledger.append(session, tenant_id=model.tenant_id, event="points.free", subject_type="request",
                      subject_id=request.id, data={
                          "point_ids": [p.point_id for p in free], "free_basis": measured.basis,
                          "pool_id": measured.pool_id,
                          "evidence_sha256": evidence.digest(measured.evidence, points_evidence),
                          "scores_from": registry.ref(model, scored_by.number) if scored_by else None,
                          "free_spent": model.free_spent})
    if pending:
        job, coalesced = _job_for(session, model=model, algorithm=algorithm, params=params)
        session.add(JobRequest(job_id=job.id, request_id=request.id))
        ledger.append(session, tenant_id=model.tenant_id, event="request.queued", subject_type="request",
                      subject_id=request.id, data={"job_id": job.id, "coalesced": coalesced})
        request.job_id = job.id
        request.response = {"body": body_out | {"job_id": job.id}, "status": 202}
    else:
        counts = dict(Counter(r.disposition for r in rows))
        ledger.append(session, tenant_id=model.tenant_id, event="request.completed", subject_type="request",
                      subject_id=request.id, data={"counts": counts})
        webhooks.emit(session, tenant_id=model.tenant_id, event_type="request.completed",
                      data={"request_id": request.id, "model": model.name, "counts": counts,
                            "ref": registry.ref(model, version.number)}, callback_url=request.callback_url)
    session.flush()
    return request


def _job_for(session: Session, *, model: Model, algorithm: str, params: dict[str, Any]) -> tuple[Job, bool]:
    """The lineage's queued job when it runs the same algorithm (coalescing: True), else a new one."""
    queued = jobs.queued_unlearn_job(session, model_id=model.id)
    if queued is not None and queued.params.get("algorithm") == algorithm and queued.params.get("params") == params:
        return queued, True
    return jobs.create(session, tenant_id=model.tenant_id, kind="unlearn", model_id=model.id,
                       version=model.current_version, params={"algorithm": algorithm, "params": params}), False


def get_request(session: Session, *, tenant_id: str, request_id: str) -> ForgetRequest:
    """One of the tenant's requests; 404 otherwise."""
    row = session.get(ForgetRequest, request_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"no request {request_id}")
    return row


def cancel(session: Session, *, tenant_id: str, request_id: str) -> ForgetRequest:
    """Cancel while the request's job has not started; free answers stay done."""
    ledger.lock_chain(session, tenant_id=tenant_id)
    request = get_request(session, tenant_id=tenant_id, request_id=request_id)
    if request.status != "accepted":
        raise Conflict(f"request is {request.status}; only accepted requests can be cancelled")
    job = session.get(Job, request.job_id) if request.job_id else None
    if job is not None and (job.status != "queued" or job.started_at is not None):
        raise Conflict(f"its job {job.id} has started; it can no longer be cancelled")
    pending = list(session.scalars(select(Disposition).where(Disposition.request_id == request.id,
                                                             Disposition.disposition == "pending")))
    for d in pending:
        d.disposition = "cancelled"
    session.flush()
    # Lift tombstones no other live disposition (in any lineage) still needs.
    for d in pending:
        still = session.scalar(select(func.count()).select_from(Disposition).where(
            Disposition.point_pk == d.point_pk, Disposition.disposition.in_(LIVE)))
        if not still:
            session.get(Point, d.point_pk).tombstoned_at = None
    request.status, request.completed_at = "cancelled", utcnow()
    if job is not None:
        session.execute(JobRequest.__table__.delete().where(JobRequest.job_id == job.id,
                                                            JobRequest.request_id == request.id))
        if not jobs.request_ids(session, job_id=job.id):
            job.status, job.finished_at = "cancelled", utcnow()
            ledger.append(session, tenant_id=tenant_id, event="job.cancelled", subject_type="job",
                          subject_id=job.id, data={})
    ledger.append(session, tenant_id=tenant_id, event="request.cancelled", subject_type="request",
                  subject_id=request.id, data={"n_points": len(pending)})
    session.flush()
    return request


def _counts(session: Session, *, request_id: str) -> dict[str, int]:
    rows = session.execute(select(Disposition.disposition, func.count()).where(
        Disposition.request_id == request_id).group_by(Disposition.disposition)).all()
    return {d: int(n) for d, n in rows}


def request_read(session: Session, *, request: ForgetRequest) -> RequestRead:
    model = session.get(Model, request.model_id)
    others = [m for m in registry.models_on_dataset(session, tenant_id=request.tenant_id, dataset_id=model.dataset_id)
              if m.current_version is not None]
    dispositions = list(session.scalars(select(Disposition).where(Disposition.request_id == request.id)
                                        .order_by(Disposition.point_id)))
    held: dict[int, list[str]] = {}
    pks = [d.point_pk for d in dispositions]
    for m in others:
        cleared = set()
        for chunk in _chunks(pks):
            cleared |= set(session.scalars(select(Disposition.point_pk).where(
                Disposition.model_id == m.id, Disposition.point_pk.in_(chunk), Disposition.disposition.in_(FINAL))))
        for pk in pks:
            if pk not in cleared:
                held.setdefault(pk, []).append(m.name)
    job_ids = list(session.scalars(select(JobRequest.job_id).where(JobRequest.request_id == request.id)))
    linked = list(session.scalars(select(ForgetRequest.id).where(ForgetRequest.linked_from == request.id)))
    return RequestRead(
        id=request.id, status=request.status, model=model.name, version=request.version,
        ref=registry.ref(model, request.version), reason=request.reason, algorithm=request.algorithm,
        params=request.params, job_id=request.job_id, jobs=job_ids, linked_from=request.linked_from,
        linked_requests=linked, unknown_subjects=request.unknown_subjects,
        counts=_counts(session, request_id=request.id), free_basis=(request.evidence or {}).get("free_basis",
                                                                                             "unmeasured"),
        points=[PointDisposition(point_id=d.point_id, disposition=d.disposition, version=d.version,
                                 ref=registry.ref(model, d.version) if d.version else None, score=d.score,
                                 separation=d.separation, still_held_by=held.get(d.point_pk, []))
                for d in dispositions],
        created_at=request.created_at, completed_at=request.completed_at,
    )


def list_requests(session: Session, *, tenant_id: str, status: str | None, offset: int,
                  limit: int) -> tuple[list[RequestSummary], int]:
    """The tenant's requests, newest first."""
    q = select(ForgetRequest, Model.name).join(Model, Model.id == ForgetRequest.model_id).where(
        ForgetRequest.tenant_id == tenant_id)
    if status:
        q = q.where(ForgetRequest.status == status)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.execute(q.order_by(ForgetRequest.created_at.desc(), ForgetRequest.id).offset(offset).limit(limit))
    return [RequestSummary(id=r.id, status=r.status, model=name, version=r.version, job_id=r.job_id,
                           counts=_counts(session, request_id=r.id), created_at=r.created_at,
                           completed_at=r.completed_at) for r, name in rows], total


def _audits_of(session: Session, *, job_ids: list[str]) -> list[dict[str, Any]]:
    """The audits of a request's jobs as evidence: verdict, statistic, null range, power, side, why."""
    from app.jobs.tables import Audit

    rows = session.scalars(select(Audit).where(Audit.job_id.in_(job_ids)).order_by(Audit.created_at, Audit.attempt))
    out = []
    for a in rows:
        ev = (a.report or {}).get("evidence") or {}
        out.append({"job_id": a.job_id, "attempt": a.attempt, "algorithm": a.algorithm, "version": a.version,
                    "verdict": a.verdict, "promoted": a.passed, "accepted_inconclusive": ev.get("accepted", False),
                    **{k: ev.get(k) for k in ("basis", "pool_id", "statistic", "null", "power", "side", "why",
                                              "parent", "n_points", "k", "size_shift", "concentrated",
                                              "concentration")},
                    "accuracy": (a.report or {}).get("accuracy")})
    return out


def evidence_page(session: Session, *, request: ForgetRequest, offset: int, limit: int) -> dict[str, Any]:
    """Per-point evidence (separation, pool) of a request, paged, with the request-level evidence and audits."""
    q = select(Disposition).where(Disposition.request_id == request.id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Disposition.point_id).offset(offset).limit(limit))
    job_ids = list(session.scalars(select(JobRequest.job_id).where(JobRequest.request_id == request.id)))
    ev = request.evidence or {"free_basis": "unmeasured", "why": "recorded before evidence was kept"}
    return {"request_id": request.id, "free_basis": ev.get("free_basis", "unmeasured"), "evidence": ev,
            "audits": _audits_of(session, job_ids=job_ids),
            "items": [{"point_id": d.point_id, "disposition": d.disposition, "separation": d.separation,
                       "pool_id": d.pool_id} for d in rows], "total": total}


def certificate(session: Session, *, request: ForgetRequest) -> dict[str, Any]:
    """A signed deletion certificate: points, dispositions, versions, audits and the ledger hashes behind them."""
    from app.forget import certificate as trail
    from app.jobs.tables import Audit
    from app.ledger import signing

    if request.status not in ("completed", "failed", "cancelled"):
        raise Conflict(f"request is {request.status}: a certificate is issued once it has ended")
    read = request_read(session, request=request)
    job_ids = read.jobs
    audits = list(session.scalars(select(Audit).where(Audit.job_id.in_(job_ids)).order_by(Audit.attempt)))
    entries = trail.lifecycle_entries(session, request=request, job_ids=job_ids)
    head = ledger.verify(session, tenant_id=request.tenant_id)
    body = ledger.canonical({
        "certificate": "lethe.deletion/v1",
        "request_id": request.id, "status": request.status, "model": read.model, "requested_against": read.ref,
        "reason": request.reason, "requested_by_hash": request.requested_by_hash,
        "created_at": read.created_at, "completed_at": read.completed_at,
        "points": [{"point_id": p.point_id, "disposition": p.disposition, "ref": p.ref,
                    "separation": p.separation} for p in read.points],
        "counts": read.counts, "linked_requests": read.linked_requests,
        "subjects_without_data": trail.subjects_without_data(request),
        "free_basis": read.free_basis, "evidence": request.evidence or {"free_basis": "unmeasured"},
        "original_outside_lethe": datasets.by_reference(session, model_id=request.model_id),  # registered by ref
        "audits": [{"job_id": a.job_id, "attempt": a.attempt, "algorithm": a.algorithm, "passed": a.passed,
                    "verdict": a.verdict, "version": a.version, "evidence": a.report.get("evidence"),
                    "accuracy": a.report.get("accuracy"), "informational": a.report.get("informational"),
                    "reasons": a.report.get("reasons")} for a in audits],
        "ledger": [{"seq": e.seq, "event": e.event, "subject_type": e.subject_type, "subject_id": e.subject_id,
                    "at": e.at, "hash": e.hash} for e in entries],
        "ledger_head": head["head"], "ledger_ok": head["ok"], "issued_at": utcnow(),
        "metrics": trail.METRICS,
    })
    return signing.sign_certificate(session, tenant_id=request.tenant_id, body=body)  # Ed25519, with a checkpoint
