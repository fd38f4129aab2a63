"""OpenDSR erasure requests: validate, match identities to datasets' subjects, fan out to forget requests,
aggregate their statuses, cancel; every status change is recorded and called back."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import artifacts
from app.datasets.tables import Dataset, Point
from app.db import utcnow
from app.errors import LetheError
from app.forget import service as forget
from app.forget.enums import REMOVED as FORGET_REMOVED
from app.forget.enums import DispositionStatus, RequestStatus
from app.forget.schemas import ForgetCreate
from app.forget.tables import Disposition, ForgetRequest
from app.identity import keyed_hash
from app.jobs.tables import Job, JobRequest, Outbox
from app.ledger import service as ledger
from app.opendsr import callbacks
from app.opendsr.enums import OPEN, OpenDsrStatus
from app.opendsr.schemas import MATCHED_TYPES, SUPPORTED_REQUEST_TYPES, Identity, OpenDsrCreate
from app.opendsr.tables import OpenDsrLink, OpenDsrRequest
from app.registry import service as registry
from app.settings import get_settings
from app.webhooks import service as webhooks

log = logging.getLogger("lethe.opendsr")
REMOVED = (*FORGET_REMOVED, DispositionStatus.ALREADY_FORGOTTEN)  # what results_count counts


class OpenDsrError(LetheError):
    """A malformed or refused OpenDSR request: rendered in the spec's error shape (§7.6), 400 by default."""

    status_code = 400

    def __init__(self, message: str, *, reason: str = "IllegalArgumentException", domain: str = "Validation",
                 errors: list[dict[str, str]] | None = None, status_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.errors = errors or [{"domain": domain, "reason": reason, "message": message}]


def rfc3339(value: datetime) -> str:
    return aware(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def canonical_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse(raw: bytes, *, legacy: bool) -> tuple[OpenDsrCreate, Any]:
    """The validated body and its parsed JSON; OpenDsrError (400, each problem listed) when malformed."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpenDsrError("the request body is not valid JSON", reason="InvalidJson") from exc
    try:
        body = OpenDsrCreate.model_validate(data)
    except ValidationError as exc:
        errors = [{"domain": "Validation", "reason": e["type"],
                   "message": ".".join(str(p) for p in e["loc"]) + ": " + e["msg"]} for e in exc.errors()]
        raise OpenDsrError(errors[0]["message"], errors=errors) from exc
    if body.regulation is None:
        if not legacy:
            raise OpenDsrError("regulation field is required ('gdpr' or 'ccpa')")
        body.regulation = "gdpr"  # OpenGDPR predates the field
    if body.subject_request_type not in SUPPORTED_REQUEST_TYPES:
        raise OpenDsrError(f"subject_request_type '{body.subject_request_type}' is not supported by this processor "
                           f"(supported: {list(SUPPORTED_REQUEST_TYPES)})", reason="UnsupportedRequestType")
    for url in body.status_callback_urls:
        try:
            webhooks.check_url(url)
        except LetheError as exc:
            raise OpenDsrError(f"status_callback_urls: {exc.detail}", reason="InvalidCallbackUrl") from exc
    return body, data


def deadline_days(regulation: str) -> int:
    settings = get_settings()
    return settings.opendsr_ccpa_days if regulation == "ccpa" else settings.opendsr_gdpr_days


# ----------------------------------------------------------------------------- submit

def replay(session: Session, *, tenant_id: str, raw: bytes, legacy: bool) -> dict[str, Any] | None:
    """The first answer to this subject_request_id (400 if the body differs), or None."""
    body, data = parse(raw, legacy=legacy)
    return _prior(session, tenant_id=tenant_id, body=body, data=data, raw=raw)


def _prior(session: Session, *, tenant_id: str, body: OpenDsrCreate, data: Any, raw: bytes) -> dict[str, Any] | None:
    prior = session.scalar(select(OpenDsrRequest).where(OpenDsrRequest.tenant_id == tenant_id,
                                                        OpenDsrRequest.subject_request_id == body.subject_request_id))
    if prior is None:
        return None
    if prior.body_hash != canonical_hash(data):
        raise OpenDsrError("a different request was already submitted under this subject_request_id",
                           reason="DuplicateSubjectRequestId")
    return prior.response | {"encoded_request": base64.b64encode(raw).decode()}


def submit(session: Session, *, tenant_id: str, raw: bytes, legacy: bool) -> dict[str, Any]:
    """Record an erasure and fan it out to one forget request per model holding the subject; the 201 body.

    A resubmitted subject_request_id answers the original response, never a second fan-out. The caller commits.
    """
    body, data = parse(raw, legacy=legacy)
    prior = _prior(session, tenant_id=tenant_id, body=body, data=data, raw=raw)
    if prior is not None:
        return prior
    ledger.lock_chain(session, tenant_id=tenant_id)
    now = utcnow()
    row = OpenDsrRequest(
        tenant_id=tenant_id, subject_request_id=body.subject_request_id, regulation=body.regulation,
        subject_request_type=body.subject_request_type, api_version=body.api_version, status=OpenDsrStatus.PENDING,
        results_count=0, body_hash=canonical_hash(data),
        identities=[{"identity_type": i.identity_type, "identity_format": i.identity_format,
                     "hash": keyed_hash(f"{i.identity_format}:{i.identity_value}")} for i in body.subject_identities],
        callback_urls=body.status_callback_urls, submitted_at=body.submitted_time, received_at=now,
        expected_completion_at=now + timedelta(days=deadline_days(body.regulation)))
    session.add(row)
    session.flush()
    request_ids = _fan_out(session, tenant_id=tenant_id, row=row, identities=body.subject_identities)
    session.add_all([OpenDsrLink(opendsr_request_id=row.id, forget_request_id=i) for i in request_ids])
    session.flush()
    _prioritise(session, request_ids=request_ids, deadline=row.expected_completion_at)
    ledger.append(session, tenant_id=tenant_id, event="opendsr.received", subject_type="opendsr_request",
                  subject_id=row.id, data={
                      "subject_request_id": row.subject_request_id, "regulation": row.regulation,
                      "subject_request_type": row.subject_request_type, "identities": row.identities,
                      "forget_requests": request_ids, "expected_completion_time": rfc3339(row.expected_completion_at),
                      "legacy_route": legacy})
    row.response = {
        "controller_id": tenant_id, "expected_completion_time": rfc3339(row.expected_completion_at),
        "received_time": rfc3339(now), "subject_request_id": row.subject_request_id,
        **({"api_version": row.api_version} if row.api_version else {}),
    }
    refresh(session, row=row)  # an unknown subject is completed at once, and says so to its callbacks
    session.flush()
    return row.response | {"encoded_request": base64.b64encode(raw).decode()}


def _fan_out(session: Session, *, tenant_id: str, row: OpenDsrRequest, identities: list[Identity]) -> list[str]:
    """One forget request per model trained on a dataset that holds the subject (linked requests included)."""
    request_ids: list[str] = []
    for dataset_id, subjects in sorted(match_subjects(session, tenant_id=tenant_id, identities=identities).items()):
        models = [m for m in registry.models_on_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
                  if m.current_version is not None]
        if not models:
            continue  # nothing trained on it yet
        primary = sorted(models, key=lambda m: (m.created_at, m.name))[0]
        # submit() opens the linked requests for the dataset's other models itself.
        response, _ = forget.submit(session, tenant_id=tenant_id, idempotency_key=None, body=ForgetCreate(
            model=primary.name, subject_ids=sorted(subjects),
            reason=f"OpenDSR {row.regulation} {row.subject_request_type} {row.subject_request_id}",
            requested_by=f"opendsr:{row.subject_request_id}"))
        request_ids += [response["request_id"], *response["linked_requests"]]
    return request_ids


def match_subjects(session: Session, *, tenant_id: str, identities: list[Identity]) -> dict[str, set[str]]:
    """{dataset id: subject ids} of the tenant's datasets holding any identity.

    Raw values match the points' keyed subject hashes; hashed formats are compared with that digest of each of
    the dataset's subjects (read from its file: only our side is hashed, never the controller's value).
    """
    usable = [i for i in identities if i.identity_type in MATCHED_TYPES]
    datasets = list(session.scalars(select(Dataset).where(Dataset.tenant_id == tenant_id,
                                                          Dataset.has_subjects.is_(True)).order_by(Dataset.name)))
    found: dict[str, set[str]] = defaultdict(set)
    if not usable or not datasets:
        return found
    raw = {keyed_hash(i.identity_value): i.identity_value for i in usable if i.identity_format == "raw"}
    if raw:
        for dataset_id, subject_hash in session.execute(select(Point.dataset_id, Point.subject_hash).where(
                Point.dataset_id.in_([d.id for d in datasets]), Point.subject_hash.in_(list(raw))).distinct()):
            found[dataset_id].add(raw[subject_hash])
    hashed: dict[str, set[str]] = defaultdict(set)
    for i in usable:
        if i.identity_format != "raw":
            hashed[i.identity_format].add(i.identity_value)
    for ds in datasets if hashed else []:
        for fmt, digests in hashed.items():
            index = _digest_index(ds.uri, ds.sha256, fmt)
            found[ds.id] |= {index[d] for d in digests if d in index}
    return {k: v for k, v in found.items() if v}


@lru_cache(maxsize=16)
def _digest_index(uri: str, sha256: str, fmt: str) -> dict[str, str]:
    """{hex digest of a subject: subject} for one dataset file (a file's content never changes under its sha)."""
    try:
        with np.load(artifacts.path_of(uri), allow_pickle=False) as npz:
            subjects = set(npz["subjects"].tolist()) if "subjects" in npz.files else set()
    except (OSError, ValueError, KeyError) as exc:
        log.warning("OpenDSR: cannot read subjects of %s for hashed identities: %s", uri, exc)
        return {}
    return {hashlib.new(fmt, s.encode()).hexdigest(): s for s in subjects if s}


def _prioritise(session: Session, *, request_ids: list[str], deadline: datetime) -> None:
    """Give the jobs serving these requests (and their unpublished outbox rows) the earlier deadline."""
    job_ids = set(session.scalars(select(JobRequest.job_id).where(JobRequest.request_id.in_(request_ids))))
    for job in session.scalars(select(Job).where(Job.id.in_(job_ids))) if job_ids else []:
        if job.deadline is None or aware(job.deadline) > deadline:
            job.deadline = deadline
    for row in session.scalars(select(Outbox).where(Outbox.job_id.in_(job_ids), Outbox.published_at.is_(None))
                               ) if job_ids else []:
        if row.deadline is None or aware(row.deadline) > deadline:
            row.deadline = deadline


# ----------------------------------------------------------------------------- status

def get(session: Session, *, tenant_id: str, subject_request_id: str) -> OpenDsrRequest:
    """One of the tenant's OpenDSR requests; 404 otherwise."""
    row = session.scalar(select(OpenDsrRequest).where(OpenDsrRequest.tenant_id == tenant_id,
                                                      OpenDsrRequest.subject_request_id == subject_request_id))
    if row is None:
        raise OpenDsrError(f"no request {subject_request_id}", reason="NotFound", domain="Lookup", status_code=404)
    return row


def forget_requests(session: Session, *, row: OpenDsrRequest) -> list[ForgetRequest]:
    return list(session.scalars(select(ForgetRequest).join(
        OpenDsrLink, OpenDsrLink.forget_request_id == ForgetRequest.id).where(
        OpenDsrLink.opendsr_request_id == row.id).order_by(ForgetRequest.created_at, ForgetRequest.id)))


def results_count(session: Session, *, request_ids: list[str]) -> int:
    """Distinct training points removed (or found already removed) across the fanned-out requests."""
    if not request_ids:
        return 0
    return int(session.scalar(select(func.count(func.distinct(Disposition.point_pk))).where(
        Disposition.request_id.in_(request_ids), Disposition.disposition.in_(REMOVED))) or 0)


def aggregate(session: Session, *, row: OpenDsrRequest) -> tuple[str, int]:
    """(status, results_count) from the forget requests, per DESIGN.md's mapping.

    accepted → pending (in_progress once a job serving it started); completed → completed; cancelled →
    cancelled; failed → in_progress (it stays open and counts against its deadline). The OpenDSR request is
    completed when every live request is; in_progress once any job serving it started (it never returns to
    pending) or any request failed; else pending. No request at all (unknown subject) is completed.
    """
    requests = forget_requests(session, row=row)
    count = results_count(session, request_ids=[r.id for r in requests])
    if row.cancelled_at is not None:
        return OpenDsrStatus.CANCELLED, count
    live = [r for r in requests if r.status != RequestStatus.CANCELLED]
    if requests and not live:
        return OpenDsrStatus.CANCELLED, count
    if all(r.status == RequestStatus.COMPLETED for r in live):
        return OpenDsrStatus.COMPLETED, count
    if any(r.status == RequestStatus.FAILED for r in live):
        return OpenDsrStatus.IN_PROGRESS, count
    # Work has begun once any job serving a live request started (answers given at request time do not count).
    started = session.scalar(select(func.count()).select_from(Job).join(JobRequest, JobRequest.job_id == Job.id)
                             .where(JobRequest.request_id.in_([r.id for r in live]), Job.started_at.is_not(None)))
    return (OpenDsrStatus.IN_PROGRESS if started else OpenDsrStatus.PENDING), count


def refresh(session: Session, *, row: OpenDsrRequest) -> str:
    """Bring the stored status up to date; a change is put in the ledger and called back (signed, with retries)."""
    status, count = aggregate(session, row=row)
    changed = status != row.status
    row.results_count = count
    if not changed:
        return status
    previous, row.status = row.status, status
    if status in (OpenDsrStatus.COMPLETED, OpenDsrStatus.CANCELLED) and row.completed_at is None:
        row.completed_at = utcnow()
    failed = [r.id for r in forget_requests(session, row=row) if r.status == RequestStatus.FAILED]
    if failed:
        log.warning("OpenDSR request %s has failed forget requests %s; it stays in_progress (deadline %s)",
                    row.subject_request_id, failed, rfc3339(row.expected_completion_at))
    ledger.append(session, tenant_id=row.tenant_id, event="opendsr.status", subject_type="opendsr_request",
                  subject_id=row.id, data={"subject_request_id": row.subject_request_id, "from": previous,
                                           "to": status, "results_count": count, "failed_requests": failed})
    for url in row.callback_urls:
        callbacks.emit(session, tenant_id=row.tenant_id, body=status_body(row, status=status, count=count,
                                                                          callback_url=url))
    return status


def status_body(row: OpenDsrRequest, *, status: str, count: int, callback_url: str | None = None) -> dict[str, Any]:
    """The status response (§8.3) or, with a callback URL, the callback body (§8.6)."""
    body: dict[str, Any] = {
        "controller_id": row.tenant_id, "expected_completion_time": rfc3339(row.expected_completion_at),
        "subject_request_id": row.subject_request_id, "request_status": status, "results_count": count,
        "api_version": row.api_version or "1.0",
    }
    if callback_url is not None:
        body["status_callback_url"] = callback_url
    return body


def status(session: Session, *, tenant_id: str, subject_request_id: str) -> dict[str, Any]:
    """The live status of a request (computed from its forget requests, so never stale)."""
    row = get(session, tenant_id=tenant_id, subject_request_id=subject_request_id)
    current, count = aggregate(session, row=row)
    return status_body(row, status=current, count=count)


def cancel(session: Session, *, tenant_id: str, subject_request_id: str) -> dict[str, Any]:
    """Cancel while pending (no job serving it has started); free answers stay done. The caller commits."""
    ledger.lock_chain(session, tenant_id=tenant_id)
    row = get(session, tenant_id=tenant_id, subject_request_id=subject_request_id)
    current, _ = aggregate(session, row=row)
    if current not in (OpenDsrStatus.PENDING, OpenDsrStatus.CANCELLED):
        raise OpenDsrError(f"the request is {current}; only pending requests can be cancelled",
                           reason="InvalidRequestState")
    if current == OpenDsrStatus.PENDING:
        cancelled = []
        for request in forget_requests(session, row=row):
            if request.status == RequestStatus.ACCEPTED:
                try:
                    forget.cancel(session, tenant_id=tenant_id, request_id=request.id)
                except LetheError as exc:  # its job started meanwhile
                    raise OpenDsrError(str(exc.detail), reason="InvalidRequestState") from exc
                cancelled.append(request.id)
        row.cancelled_at = utcnow()
        ledger.append(session, tenant_id=tenant_id, event="opendsr.cancelled", subject_type="opendsr_request",
                      subject_id=row.id, data={"subject_request_id": row.subject_request_id,
                                               "forget_requests": cancelled})
    refresh(session, row=row)
    session.flush()
    return {"controller_id": tenant_id, "subject_request_id": row.subject_request_id,
            "received_time": rfc3339(utcnow()), "api_version": row.api_version or "1.0"}


def refresh_for_requests(session: Session, *, request_ids: list[str]) -> None:
    """Refresh every OpenDSR request built on any of these forget requests."""
    if not request_ids:
        return
    ids = select(OpenDsrLink.opendsr_request_id).where(OpenDsrLink.forget_request_id.in_(request_ids))
    rows = session.scalars(select(OpenDsrRequest).where(OpenDsrRequest.id.in_(ids)).order_by(OpenDsrRequest.id))
    for row in list(rows):
        if row.status in OPEN:
            refresh(session, row=row)


def open_by_time_left(session: Session, *, now: datetime | None = None) -> tuple[dict[str, int], int]:
    """({bucket: open requests}, deadlines missed) for the metrics."""
    now = now or utcnow()
    buckets = {"overdue": 0, "lt_1d": 0, "lt_7d": 0, "lt_30d": 0, "ge_30d": 0}
    for (deadline,) in session.execute(select(OpenDsrRequest.expected_completion_at).where(
            OpenDsrRequest.status.in_(OPEN))):
        left = aware(deadline) - now
        key = ("overdue" if left <= timedelta(0) else "lt_1d" if left < timedelta(days=1) else
               "lt_7d" if left < timedelta(days=7) else "lt_30d" if left < timedelta(days=30) else "ge_30d")
        buckets[key] += 1
    missed = session.scalar(select(func.count()).select_from(OpenDsrRequest).where(
        OpenDsrRequest.cancelled_at.is_(None),
        ((OpenDsrRequest.status.in_(OPEN)) & (OpenDsrRequest.expected_completion_at < now))
        | (OpenDsrRequest.completed_at > OpenDsrRequest.expected_completion_at))) or 0
    return buckets, int(missed)
