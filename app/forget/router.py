from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from app.auth import Forgetter, Reader
from app.db import SessionDep, session_scope
from app.forget import reads, service
from app.forget.enums import RequestStatus
from app.forget.schemas import EvidencePage, ForgetCreate, ForgetResponse, RequestRead, RequestSummary
from app.ledger import signing
from app.openapi import problems
from app.opendsr import hooks as opendsr
from app.paging import Page, PageParams, next_cursor, page_params

router = APIRouter(tags=["forget"])


@router.post("/forget", response_model=ForgetResponse, status_code=202,
             responses={200: {"model": ForgetResponse, "description": "nothing needed a job"}} | problems(404, 409))
def forget(body: ForgetCreate, caller: Forgetter, session: SessionDep,
           idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JSONResponse:
    """Forget points or data subjects: free ones are answered now, the rest go to an unlearning job."""
    if idempotency_key:
        # Replays are answered from a snapshot, without queueing behind writers.
        with session_scope(readonly=True) as read:
            prior = service.replay(read, tenant_id=caller.tenant_id, body=body, idempotency_key=idempotency_key)
            if prior is not None:
                checkpoint = signing.current_checkpoint(read, tenant_id=caller.tenant_id)
        if prior is not None:
            return _answer(prior[0] | {"checkpoint": checkpoint}, prior[1])
    try:
        response, status = service.submit(session, tenant_id=caller.tenant_id, body=body,
                                          idempotency_key=idempotency_key)
        # The answer carries the chain head it commits, signed: a copy of the ledger's state outside Lethe.
        response = response | {"checkpoint": signing.checkpoint(session, tenant_id=caller.tenant_id)}
        session.commit()
    except IntegrityError:
        # A concurrent duplicate with the same Idempotency-Key committed first: replay its answer (or 409).
        session.rollback()
        if not idempotency_key:
            raise
        response, status = service.submit(session, tenant_id=caller.tenant_id, body=body,
                                          idempotency_key=idempotency_key)
        session.rollback()
        response = response | {"checkpoint": signing.latest(session, tenant_id=caller.tenant_id)}
    return _answer(response, status)


def _answer(response: dict, status: int) -> JSONResponse:
    headers = {}
    if response.get("job_id"):
        headers["Location"] = f"/jobs/{response['job_id']}"
    return JSONResponse(response, status_code=status, headers=headers)


@router.get("/requests", response_model=Page[RequestSummary])
def list_requests(caller: Reader, session: SessionDep, page: Annotated[PageParams, Depends(page_params)],
                  status: Annotated[RequestStatus | None, Query()] = None) -> Page[RequestSummary]:
    """The tenant's forget requests, newest first, a page at a time; filter by status."""
    items, total = reads.list_requests(session, tenant_id=caller.tenant_id, status=status,
                                         offset=page.offset, limit=page.limit)
    return Page(items=items, total=total, next=next_cursor(page, total))


@router.get("/requests/{request_id}", response_model=RequestRead)
def get_request(request_id: str, caller: Reader, session: SessionDep) -> RequestRead:
    """One forget request: its points' dispositions (free, pending, forgotten), its jobs and status."""
    return reads.request_read(session, request=service.get_request(session, tenant_id=caller.tenant_id,
                                                                     request_id=request_id))


@router.get("/requests/{request_id}/evidence", response_model=EvidencePage)
def get_evidence(request_id: str, caller: Reader, session: SessionDep,
                 page: Annotated[PageParams, Depends(page_params)]) -> EvidencePage:
    """What each point's answer rests on: its separation in the reference pool, the pool, the certified set's
    bounds, and the audits of the jobs that served the request."""
    request = service.get_request(session, tenant_id=caller.tenant_id, request_id=request_id)
    body = reads.evidence_page(session, request=request, offset=page.offset, limit=page.limit)
    return EvidencePage(**body, next=next_cursor(page, body["total"]))


@router.get("/requests/{request_id}/certificate", responses=problems(409))
def get_certificate(request_id: str, caller: Reader, session: SessionDep) -> dict:
    """A signed deletion certificate for a privacy officer to hand to an auditor."""
    return reads.certificate(session, request=service.get_request(session, tenant_id=caller.tenant_id,
                                                                    request_id=request_id))


@router.post("/requests/{request_id}/cancel", response_model=RequestRead)
def cancel_request(request_id: str, caller: Forgetter, session: SessionDep) -> RequestRead:
    """Cancel an accepted request whose job has not started; its pending points stay in the model."""
    request = service.cancel(session, tenant_id=caller.tenant_id, request_id=request_id)
    opendsr.request_changed(session, request_id=request.id)  # an OpenDSR request on it is called back
    session.commit()
    return reads.request_read(session, request=request)
