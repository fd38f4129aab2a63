from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from app.auth import Reader
from app.db import SessionDep
from app.ledger import service, signing
from app.ledger.schemas import CheckpointRead, LedgerEntryRead, LedgerHead, LedgerVerify
from app.paging import Page, decode_cursor, encode_cursor, page_of

router = APIRouter(prefix="/ledger", tags=["ledger"])


@router.get("", response_model=Page[LedgerEntryRead])
def list_ledger(caller: Reader, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                cursor: str | None = None, event: str | None = None,
                subject_id: str | None = None) -> Page[LedgerEntryRead]:
    """The tenant's chain in order; the cursor is the last sequence number seen."""
    rows, total = service.list_entries(session, tenant_id=caller.tenant_id, event=event, subject_id=subject_id,
                                       after=decode_cursor(cursor), limit=limit)
    nxt = encode_cursor(rows[-1].seq) if len(rows) == limit else None
    return page_of(LedgerEntryRead, rows, total=total, next=nxt)


@router.get("/verify", response_model=LedgerVerify)
def verify(caller: Reader, session: SessionDep) -> LedgerVerify:
    """Recompute the tenant's chain; when broken, name the first entry that does not verify."""
    return LedgerVerify(**service.verify(session, tenant_id=caller.tenant_id))


@router.get("/head", response_model=LedgerHead)
def head(caller: Reader, session: SessionDep) -> LedgerHead:
    """The chain head (seq, hash, time) and its signed checkpoint, to keep outside Lethe."""
    return LedgerHead(**service.head(session, tenant_id=caller.tenant_id),
                      checkpoint=signing.current_checkpoint(session, tenant_id=caller.tenant_id))


@router.get("/checkpoints", response_model=Page[CheckpointRead])
def checkpoints(caller: Reader, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                cursor: str | None = None) -> Page[CheckpointRead]:
    """Signed chain heads in chain order (the current head is signed first if it moved); cursor: last seq seen."""
    after = decode_cursor(cursor) if cursor else -1  # seq 0 is the empty chain's checkpoint
    items, total = signing.page_checkpoints(session, tenant_id=caller.tenant_id, after=after, limit=limit)
    nxt = encode_cursor(items[-1]["seq"]) if len(items) == limit else None
    return Page(items=[CheckpointRead(**i) for i in items], total=total, next=nxt)


@router.get("/public-key", response_class=PlainTextResponse,
            responses={200: {"content": {"application/x-pem-file": {}}}})
def public_key() -> PlainTextResponse:
    """The Ed25519 public key (PEM) that verifies checkpoints, certificates and callback_url deliveries. Public."""
    return PlainTextResponse(signing.public_pem(), media_type="application/x-pem-file")
