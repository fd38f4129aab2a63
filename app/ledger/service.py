"""Append to and verify the per-tenant hash chain."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.db import count, utcnow
from app.ledger import signing
from app.ledger.chain import GENESIS, HELD, canonical, entry_hash, stored_tip
from app.ledger.tables import LedgerEntry
from app.tenants.tables import Tenant
from app.timestamps import rfc3339

CLOSING = frozenset({"request.completed", "request.failed", "request.cancelled",
                     "job.completed", "job.failed", "job.cancelled"})
DUE = "ledger_checkpoint_due"  # session.info: tenants on whose chain this transaction closed a request or job


def lock_chain(session: Session, *, tenant_id: str) -> None:
    """Take the tenant's chain lock first: transactions that touch shared rows and then append would
    otherwise lock in opposite orders and deadlock (Postgres; SQLite's BEGIN IMMEDIATE serialises anyway).
    Taken once per transaction: the session remembers it until commit or rollback."""
    held = session.info.setdefault(HELD, {})
    if tenant_id not in held:
        if session.get_bind().dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE already holds the lock
            session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
        held[tenant_id] = None


def append(session: Session, *, tenant_id: str, event: str, subject_type: str, subject_id: str,
           data: dict[str, Any] | None = None) -> LedgerEntry:
    """Append one event to the tenant's chain inside the caller's transaction."""
    # Row lock on the tenant serialises appenders on Postgres (SQLite: BEGIN IMMEDIATE does). Holding it, this
    # transaction alone extends the chain, so the tip is read once and then carried in the session.
    lock_chain(session, tenant_id=tenant_id)
    held = session.info[HELD]
    tip = held[tenant_id]
    if tip is None:
        with session.no_autoflush:  # nothing pending can change the tip: this chain's appends all pass here
            tip = stored_tip(session, tenant_id=tenant_id)
    seq, prev = tip[0] + 1, tip[1]
    payload = canonical(data or {})
    at = rfc3339(utcnow())
    entry = LedgerEntry(
        tenant_id=tenant_id, seq=seq, event=event, subject_type=subject_type, subject_id=subject_id,
        data=payload, at=at, prev_hash=prev,
        hash=entry_hash(tenant_id=tenant_id, seq=seq, event=event, subject_type=subject_type,
                        subject_id=subject_id, data=payload, at=at, prev_hash=prev),
    )
    session.add(entry)  # inserted with the transaction's next flush, in order (ledger rows are only ever added)
    held[tenant_id] = (seq, entry.hash)
    if event in CLOSING:
        session.info.setdefault(DUE, set()).add(tenant_id)
    return entry


def append_once(session: Session, *, tenant_id: str, event: str, subject_type: str, subject_id: str,
                data: dict[str, Any] | None = None) -> None:
    """append, unless the chain already holds this event for this subject (a re-run job records it once)."""
    lock_chain(session, tenant_id=tenant_id)
    if session.scalar(select(LedgerEntry.id).where(LedgerEntry.tenant_id == tenant_id, LedgerEntry.event == event,
                                                   LedgerEntry.subject_id == subject_id).limit(1)) is None:
        append(session, tenant_id=tenant_id, event=event, subject_type=subject_type, subject_id=subject_id,
               data=data)


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_soft_rollback")
def _release_chains(session: Session, *_: Any) -> None:
    """A new transaction locks and reads the chain afresh (a rolled-back savepoint may have held appends)."""
    session.info.pop(HELD, None)
    session.info.pop("ledger_checkpoint_done", None)


@event.listens_for(Session, "before_commit")
def _checkpoint_closings(session: Session) -> None:
    """A transaction that closes a request or job ends with a signed checkpoint of its head, committed with it:
    clients and auditors get a signed head after every such step, at one INSERT per transaction."""
    due = session.info.pop(DUE, None)
    if due:
        for tenant_id in sorted(due):
            signing.checkpoint(session, tenant_id=tenant_id)


@event.listens_for(Session, "after_rollback")
def _drop_due(session: Session) -> None:
    session.info.pop(DUE, None)


def verify(session: Session, *, tenant_id: str) -> dict[str, Any]:
    """Recompute the whole chain; report the first entry that does not match (seq, row id and why).

    `head` is the hash of the last entry that verified: everything up to it is intact.
    """
    prev = GENESIS
    count = 0
    expected_seq = 1
    rows = session.execute(
        select(LedgerEntry).where(LedgerEntry.tenant_id == tenant_id).order_by(LedgerEntry.seq)
    ).scalars()
    for e in rows:
        recomputed = entry_hash(tenant_id=tenant_id, seq=e.seq, event=e.event, subject_type=e.subject_type,
                                subject_id=e.subject_id, data=e.data, at=e.at, prev_hash=prev)
        reason = None
        if e.seq != expected_seq:
            reason = f"sequence gap: expected seq {expected_seq}, found {e.seq} (entries removed)"
        elif e.prev_hash != prev:
            reason = "prev_hash does not match the previous entry's hash"
        elif e.hash != recomputed:
            reason = "content does not match its hash (entry edited)"
        if reason:
            return {"ok": False, "entries": count, "head": prev, "broken_at": e.seq, "broken_id": e.id,
                    "reason": reason}
        prev = e.hash
        count += 1
        expected_seq += 1
    return {"ok": True, "entries": count, "head": prev}


def head(session: Session, *, tenant_id: str) -> dict[str, Any]:
    """The tenant's chain head as stored (seq, hash, time), to anchor outside Lethe; seq 0 is the empty chain."""
    last = session.scalar(
        select(LedgerEntry).where(LedgerEntry.tenant_id == tenant_id).order_by(LedgerEntry.seq.desc()).limit(1)
    )
    if last is None:
        return {"tenant_id": tenant_id, "seq": 0, "hash": GENESIS, "at": None}
    return {"tenant_id": tenant_id, "seq": last.seq, "hash": last.hash, "at": last.at}


def list_entries(session: Session, *, tenant_id: str, event: str | None = None, subject_id: str | None = None,
                 after: int = 0, limit: int = 100) -> tuple[list[LedgerEntry], int]:
    """Entries in chain order after a sequence number, with the filtered total."""
    q = select(LedgerEntry).where(LedgerEntry.tenant_id == tenant_id)
    if event:
        q = q.where(LedgerEntry.event == event)
    if subject_id:
        q = q.where(LedgerEntry.subject_id == subject_id)
    total = count(session, q)
    rows = session.execute(q.where(LedgerEntry.seq > after).order_by(LedgerEntry.seq).limit(limit)).scalars()
    return list(rows), total
