"""The read side of forget requests: a request with its points, the list, the per-point evidence, and the
signed deletion certificate."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.datasets import service as datasets
from app.db import count, page, utcnow
from app.errors import Conflict
from app.forget import certificate as trail
from app.forget.enums import ENDED, REMOVED
from app.forget.points import chunks
from app.forget.schemas import PointDisposition, RequestRead, RequestSummary
from app.forget.tables import Disposition, ForgetRequest
from app.jobs.tables import Audit, JobRequest
from app.ledger import service as ledger
from app.ledger import signing
from app.registry import service as registry
from app.registry.tables import Model


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
        for chunk in chunks(pks):
            cleared |= set(session.scalars(select(Disposition.point_pk).where(
                Disposition.model_id == m.id, Disposition.point_pk.in_(chunk), Disposition.disposition.in_(REMOVED))))
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
    total = count(session, q)
    rows = session.execute(q.order_by(ForgetRequest.created_at.desc(), ForgetRequest.id).offset(offset).limit(limit))
    return [RequestSummary(id=r.id, status=r.status, model=name, version=r.version, job_id=r.job_id,
                           counts=_counts(session, request_id=r.id), created_at=r.created_at,
                           completed_at=r.completed_at) for r, name in rows], total


def _audits_of(session: Session, *, job_ids: list[str]) -> list[dict[str, Any]]:
    """The audits of a request's jobs as evidence: verdict, statistic, null range, power, side, why."""
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
    rows, total = page(session, q, Disposition.point_id, offset=offset, limit=limit)
    job_ids = list(session.scalars(select(JobRequest.job_id).where(JobRequest.request_id == request.id)))
    ev = request.evidence or {"free_basis": "unmeasured", "why": "recorded before evidence was kept"}
    return {"request_id": request.id, "free_basis": ev.get("free_basis", "unmeasured"), "evidence": ev,
            "audits": _audits_of(session, job_ids=job_ids),
            "items": [{"point_id": d.point_id, "disposition": d.disposition, "separation": d.separation,
                       "pool_id": d.pool_id} for d in rows], "total": total}


def certificate(session: Session, *, request: ForgetRequest) -> dict[str, Any]:
    """A signed deletion certificate: points, dispositions, versions, audits and the ledger hashes behind them."""
    if request.status not in ENDED:
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
