from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class LedgerEntryRead(BaseModel):
    seq: int
    event: str
    subject_type: str
    subject_id: str
    data: dict[str, Any]
    at: str
    prev_hash: str
    hash: str


class LedgerVerify(BaseModel):
    ok: bool
    entries: int
    head: str
    broken_at: int | None = None
