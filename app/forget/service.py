"""POST /forget: validate, triage, tombstone, record, and queue the rest — in one transaction."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import idempotency
from app.datasets import service as datasets
from app.datasets.tables import Point
from app.db import new_id, utcnow
from app.errors import Conflict, NotFound, Unprocessable, closest, did_you_mean
from app.evidence import service as evidence
from app.forget import points as lookup
from app.forget.enums import LIVE, REMOVED, DispositionStatus, RequestStatus
from app.forget.schemas import ForgetCreate
from app.forget.tables import Disposition, ForgetRequest
from app.forget.triage import Candidate, triage
from app.identity import keyed_hash
from app.jobs import service as jobs
from app.jobs.enums import JobKind, JobStatus
from app.jobs.params import UnlearnParams
from app.jobs.tables import Job, JobRequest
from app.ledger import service as ledger
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.schemas import ALGORITHMS, Policy
from app.registry.tables import Model, Version
from app.settings import get_settings
from app.webhooks import service as webhooks
from workers.engine.params import validate_params

# Called as listener(session, request_id=...) in the transaction that closed a request: OpenDSR registers its
# status refresh (signed callbacks) here, so this domain never imports the protocols built on it.
_ON_CLOSE: list[Callable[..., None]] = []


def body_hash(body: ForgetCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _deciding_scores(session: Session, *, model: Model, version: Version) -> tuple[Version | None, Any]:
    """Scores of the current version, else of its nearest scored ancestor (they decide until ours land)."""
    method = model.settings.scorer
    v: Version | None = version
    while v is not None:
        run = runs.influence_run(session, version=v, method=method)
        scores = runs.load_scores(run) if run else None
        if scores is not None and v.threshold is not None:
            return v, scores
        v = session.get(Version, v.parent_id) if v.parent_id else None
    return None, None


def validate_algorithm(algorithm: str | None, params: dict[str, Any] | None, policy: Policy,
                       architecture: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The request's algorithm and params, defaulting to the model's policy; 422 when unknown or when it cannot
    apply to the model's architecture (naming why)."""
    algo = algorithm or policy.algorithm
    if algo not in ALGORITHMS:
        suggestions = closest(algo, ALGORITHMS)
        raise Unprocessable(f"unknown algorithm '{algo}'{did_you_mean(suggestions)} (one of {list(ALGORITHMS)})",
                            choices=list(ALGORITHMS), suggestions=suggestions)
    if architecture is not None:
        registry.check_applies(architecture, [algo])
    if params is None:
        params = dict(policy.params) if algo == policy.algorithm else {}
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
    algorithm, params = validate_algorithm(body.algorithm, body.params, model.settings, model.architecture)
    if body.callback_url:
        webhooks.check_url(str(body.callback_url))

    by_id = lookup.by_id(session, dataset_id=model.dataset_id, point_ids=body.point_ids)
    unknown = sorted(set(body.point_ids) - set(by_id))
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise Unprocessable(f"{len(unknown)} point id(s) are not in this model's dataset: {shown}",
                            unknown_point_ids=unknown[:1000])
    subject_points, unknown_subjects = lookup.by_subject(session, dataset_id=model.dataset_id,
                                                          subject_ids=body.subject_ids)
    points = {p.id: p for p in list(by_id.values()) + subject_points}

    request = _open(session, model=model, points=list(points.values()), body=body, algorithm=algorithm,
                    params=params, unknown_subjects=unknown_subjects, linked_from=None,
                    idempotency=(idempotency_key, digest))
    linked = []
    for other in registry.models_on_dataset(session, tenant_id=tenant_id, dataset_id=model.dataset_id):
        if other.id != model.id and other.current_version is not None and points:
            lalgo, lparams = validate_algorithm(None, None, other.settings, other.architecture)
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


@dataclass
class _Split:
    """A lineage's answer for a request's points, before anything is recorded."""

    already: list[Point]  # removed from the lineage by an earlier request
    todo: list[Point]
    fresh: list[Point]  # todo minus points pending in an earlier request (they stay with its job)
    existing: dict[int, Disposition]
    measured: evidence.Triage
    free: list[Point]
    pending: list[Point]
    scored_by: Version | None = None  # provisional rule only: the version whose scores decided
    scores: Any = None


def _provisional(session: Session, *, model: Model, version: Version, fresh: list[Point],
                 measured: evidence.Triage) -> tuple[evidence.Triage, Version | None, Any]:
    """No pool measured these points and LETHE_FREE_PROVISIONAL is on: influence scores decide, labelled so."""
    scored_by, scores = _deciding_scores(session, model=model, version=version)
    candidates = [Candidate(key=p.id, point_id=p.point_id,
                            score=float(scores[p.row]) if scores is not None else None) for p in fresh]
    budget_left = (scored_by.budget or 0) - model.free_spent if scored_by is not None else 0
    chosen, _ = triage(candidates, threshold=scored_by.threshold if scored_by else None, budget_left=budget_left)
    return evidence.Triage("provisional", free={c.key for c in chosen}, evidence={
        "free_basis": "provisional", "why": measured.evidence.get("why"),
        "rule": f"influence score below the {get_settings().free_quantile:.0%} quantile of "
                f"{registry.ref(model, scored_by.number) if scored_by else 'no scored version'}: NOT measured"}), \
        scored_by, scores


def _split(session: Session, *, model: Model, version: Version, points: list[Point]) -> _Split:
    """Which points are already forgotten, free now, or pending a job."""
    existing = lookup.live_dispositions(session, model_id=model.id, point_pks=[p.id for p in points])
    already = [p for p in points if p.id in existing and existing[p.id].disposition in REMOVED]
    todo = [p for p in points if p not in already]
    fresh = [p for p in todo if p.id not in existing]
    measured = evidence.triage(session, model=model, candidates={p.id: p.row for p in fresh})
    scored_by, scores = None, None
    if measured.basis == "unmeasured" and get_settings().free_provisional:
        measured, scored_by, scores = _provisional(session, model=model, version=version, fresh=fresh,
                                                   measured=measured)
    return _Split(already=already, todo=todo, fresh=fresh, existing=existing, measured=measured,
                  free=sorted((p for p in fresh if p.id in measured.free), key=lambda p: p.point_id),
                  pending=[p for p in todo if p.id not in measured.free], scored_by=scored_by, scores=scores)


def _dispositions(session: Session, *, request: ForgetRequest, model: Model, version: Version,
                  split: _Split) -> list[Disposition]:
    """Each point's disposition row; every point tombstoned; the free ones counted against the budget."""
    measured, now = split.measured, utcnow()
    score_of = {p.id: float(split.scores[p.row]) for p in split.fresh} if split.scores is not None else {}
    rows = [Disposition(request_id=request.id, model_id=model.id, point_pk=p.id, point_id=p.point_id,
                        disposition=d, version=v, score=score_of.get(p.id),
                        separation=measured.separation.get(p.id),
                        pool_id=measured.pool_id if p.id in measured.separation else None)
            for p, d, v in ([(p, DispositionStatus.ALREADY_FORGOTTEN, split.existing[p.id].version)
                             for p in split.already]
                            + [(p, DispositionStatus.FREE, version.number) for p in split.todo
                               if p.id in measured.free]
                            + [(p, DispositionStatus.PENDING, None) for p in split.pending])]
    session.add_all(rows)
    for p in split.already + split.todo:
        p.tombstoned_at = p.tombstoned_at or now
    model.free_spent += len(split.free)
    return rows


def _log_opened(session: Session, *, request: ForgetRequest, model: Model, version: Version, split: _Split,
                n_points: int) -> None:
    """The request's ledger entries: received, and (if any) the points answered free."""
    measured, scores_from = split.measured, registry.ref(model, split.scored_by.number) if split.scored_by else None
    ledger.append(session, tenant_id=model.tenant_id, event="request.received", subject_type="request",
                  subject_id=request.id, data={
                      "model": model.name, "ref": registry.ref(model, version.number), "reason": request.reason,
                      "requested_by": request.requested_by_hash, "n_points": n_points,
                      "n_unknown_subjects": len(request.unknown_subjects),
                      "unknown_subjects": request.unknown_subjects, "linked_from": request.linked_from,
                      "algorithm": request.algorithm, "free_basis": measured.basis, "pool_id": measured.pool_id,
                      "evidence_sha256": evidence.digest(measured.evidence, [])})
    if split.free:
        points_evidence = [{"point_id": p.point_id, "separation": measured.separation.get(p.id)}
                           for p in split.free]
        ledger.append(session, tenant_id=model.tenant_id, event="points.free", subject_type="request",
                      subject_id=request.id, data={
                          "point_ids": [p.point_id for p in split.free], "free_basis": measured.basis,
                          "pool_id": measured.pool_id,
                          "evidence_sha256": evidence.digest(measured.evidence, points_evidence),
                          "scores_from": scores_from, "free_spent": model.free_spent})


def _open(session: Session, *, model: Model, points: list[Point], body: ForgetCreate, algorithm: str,
          params: dict[str, Any], unknown_subjects: list[str], linked_from: str | None,
          idempotency: tuple[str | None, str | None] = (None, None)) -> ForgetRequest:
    """One lineage's request: dispositions, tombstones, ledger entries, and its job if needed.

    The request row is built whole before anything flushes it (its id is drawn here), so a free answer
    costs one INSERT, not an INSERT and UPDATEs."""
    version = registry.get_version(session, model=model, number=model.current_version)
    split = _split(session, model=model, version=version, points=points)
    pending = split.pending
    request_id, opened = new_id(), utcnow()  # one instant: an answer given at once completes as it is created
    body_out = {
        "request_id": request_id, "status": RequestStatus.ACCEPTED if pending else RequestStatus.COMPLETED,
        "model": model.name, "version": version.number, "ref": registry.ref(model, version.number),
        "free": [p.point_id for p in split.free], "pending": sorted(p.point_id for p in pending),
        "already_forgotten": sorted(p.point_id for p in split.already), "unknown_subjects": unknown_subjects,
        "job_id": None, "linked_requests": [], "free_basis": split.measured.basis, "pool_id": split.measured.pool_id,
        "scores_from": registry.ref(model, split.scored_by.number) if split.scored_by else None,
    }
    request = ForgetRequest(id=request_id, tenant_id=model.tenant_id, model_id=model.id, version=version.number,
                            status=body_out["status"], reason=body.reason,
                            requested_by_hash=keyed_hash(body.requested_by),
                            callback_url=str(body.callback_url) if body.callback_url else None,
                            algorithm=algorithm, params=params, linked_from=linked_from,
                            unknown_subjects=unknown_subjects,
                            response={"body": body_out, "status": 202 if pending else 200},
                            idempotency_key=idempotency[0], body_hash=idempotency[1],
                            evidence=split.measured.evidence, created_at=opened,
                            completed_at=None if pending else opened)
    session.add(request)
    session.flush()  # before the rows that refer to it (the unit of work orders by relationships, not FKs)
    rows = _dispositions(session, request=request, model=model, version=version, split=split)
    _log_opened(session, request=request, model=model, version=version, split=split, n_points=len(points))
    if pending:
        job, coalesced = _job_for(session, model=model, algorithm=algorithm, params=params)
        session.add(JobRequest(job_id=job.id, request_id=request.id))
        ledger.append(session, tenant_id=model.tenant_id, event="request.queued", subject_type="request",
                      subject_id=request.id, data={"job_id": job.id, "coalesced": coalesced})
        request.job_id = job.id
        request.response = {"body": body_out | {"job_id": job.id}, "status": 202}
    else:  # answered at once: completed as it is created (status and completed_at set above)
        _ended(session, request=request, model=model, counts=dict(Counter(r.disposition for r in rows)),
               version=version.number)
    session.flush()
    return request


def _ended(session: Session, *, request: ForgetRequest, model: Model, counts: dict[str, int],
           version: int | None) -> None:
    """A request reached its end (completed, failed): its ledger entry and webhook event, written here only."""
    ledger.append(session, tenant_id=request.tenant_id, event=f"request.{request.status}", subject_type="request",
                  subject_id=request.id, data={"counts": counts, "version": version})
    webhooks.emit(session, tenant_id=request.tenant_id, event_type=f"request.{request.status}",
                  data={"request_id": request.id, "model": model.name, "counts": counts,
                        "ref": registry.ref(model, version) if version else None}, callback_url=request.callback_url)


def on_close(listener: Callable[..., None]) -> None:
    """Call `listener(session, request_id=...)` whenever a request closes (completed or failed by its job)."""
    if listener not in _ON_CLOSE:
        _ON_CLOSE.append(listener)


def open_requests(session: Session, *, job_id: str) -> list[ForgetRequest]:
    """The accepted (not yet closed) requests a job serves."""
    rows = (session.get(ForgetRequest, i) for i in jobs.request_ids(session, job_id=job_id))
    return [r for r in rows if r is not None and r.status == RequestStatus.ACCEPTED]


def close(session: Session, *, request: ForgetRequest, status: RequestStatus, version: int | None,
          outcome: dict[int, DispositionStatus] | None = None) -> None:
    """Close an accepted request: its pending points take `outcome` (point pk → pruned | unlearned, with the
    version that removed them), or `failed` when it failed; then its status, ledger entry, webhook event and
    the listeners (the OpenDSR requests built on it: signed callbacks)."""
    counts: dict[str, int] = {}
    for d in session.scalars(select(Disposition).where(Disposition.request_id == request.id)):
        if d.disposition == DispositionStatus.PENDING:
            failed = status == RequestStatus.FAILED
            d.disposition = (outcome or {}).get(d.point_pk, DispositionStatus.FAILED if failed else d.disposition)
            if d.disposition in (DispositionStatus.PRUNED, DispositionStatus.UNLEARNED):
                d.version = version
        counts[d.disposition] = counts.get(d.disposition, 0) + 1
    request.status, request.completed_at = status, utcnow()
    _ended(session, request=request, model=session.get(Model, request.model_id), counts=counts, version=version)
    for listener in _ON_CLOSE:
        listener(session, request_id=request.id)


def close_all(session: Session, *, job_id: str, status: RequestStatus, version: int | None = None,
              outcome: dict[int, DispositionStatus] | None = None) -> None:
    """Close every accepted request a job serves (see close)."""
    for request in open_requests(session, job_id=job_id):
        close(session, request=request, status=status, version=version, outcome=outcome)


def _job_for(session: Session, *, model: Model, algorithm: str, params: dict[str, Any]) -> tuple[Job, bool]:
    """The lineage's queued job when it runs the same algorithm (coalescing: True), else a new one."""
    wanted = UnlearnParams(algorithm=algorithm, params=params)
    queued = jobs.queued_unlearn_job(session, model_id=model.id)
    if queued is not None and UnlearnParams.model_validate(queued.params) == wanted:
        return queued, True
    return jobs.create(session, tenant_id=model.tenant_id, kind=JobKind.UNLEARN, model_id=model.id,
                       version=model.current_version, params=wanted.model_dump()), False


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
    if request.status != RequestStatus.ACCEPTED:
        raise Conflict(f"request is {request.status}; only accepted requests can be cancelled")
    job = session.get(Job, request.job_id) if request.job_id else None
    if job is not None and (job.status != JobStatus.QUEUED or job.started_at is not None):
        raise Conflict(f"its job {job.id} has started; it can no longer be cancelled")
    pending = list(session.scalars(select(Disposition).where(Disposition.request_id == request.id,
                                                             Disposition.disposition == DispositionStatus.PENDING)))
    for d in pending:
        d.disposition = DispositionStatus.CANCELLED
    session.flush()
    # Lift tombstones no other live disposition (in any lineage) still needs.
    for d in pending:
        still = session.scalar(select(func.count()).select_from(Disposition).where(
            Disposition.point_pk == d.point_pk, Disposition.disposition.in_(LIVE)))
        if not still:
            session.get(Point, d.point_pk).tombstoned_at = None
    request.status, request.completed_at = RequestStatus.CANCELLED, utcnow()
    if job is not None:
        session.execute(JobRequest.__table__.delete().where(JobRequest.job_id == job.id,
                                                            JobRequest.request_id == request.id))
        if not jobs.request_ids(session, job_id=job.id):
            jobs.cancel(session, job=job)
    ledger.append(session, tenant_id=tenant_id, event="request.cancelled", subject_type="request",
                  subject_id=request.id, data={"n_points": len(pending)})
    session.flush()
    return request
