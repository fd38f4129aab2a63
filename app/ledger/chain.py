"""The hash chain's primitives: the canonical JSON of an entry, its hash, and the chain's tip.

What both the ledger service (appending) and its signing (checkpoints of the tip) build on.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.ledger.tables import LedgerEntry
from app.timestamps import rfc3339

HELD = "ledger_chains"  # session.info: {tenant_id: (seq, hash) of the chain's tip, or None} locked this transaction
GENESIS = "0" * 64


def _plain(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else str(value)


def canonical(value: Any) -> Any:
    """The JSON form that is stored and hashed, so that verify recomputes the same bytes (datetimes as RFC 3339
    UTC, the API's one format)."""
    return json.loads(json.dumps(value, sort_keys=True, default=_plain))


def entry_hash(*, tenant_id: str, seq: int, event: str, subject_type: str, subject_id: str,
               data: dict[str, Any], at: str, prev_hash: str) -> str:
    """SHA-256 over the entry's canonical JSON, which includes the previous entry's hash."""
    body = json.dumps(
        {"tenant": tenant_id, "seq": seq, "event": event, "subject_type": subject_type,
         "subject_id": subject_id, "data": data, "at": at, "prev": prev_hash},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def stored_tip(session: Session, *, tenant_id: str) -> tuple[int, str]:
    """(seq, hash) of the chain's last stored entry; (0, GENESIS) for an empty chain."""
    last = session.execute(select(LedgerEntry.seq, LedgerEntry.hash).where(LedgerEntry.tenant_id == tenant_id)
                           .order_by(LedgerEntry.seq.desc()).limit(1)).first()
    return (last[0], last[1]) if last else (0, GENESIS)


def tip(session: Session, *, tenant_id: str) -> tuple[int, str]:
    """The tip this transaction will commit: its own last append when it appended, else the stored one."""
    held = session.info.get(HELD, {}).get(tenant_id)
    return held if held is not None else stored_tip(session, tenant_id=tenant_id)
