from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    entries: int = Field(description="entries that verified, from the start of the chain")
    head: str = Field(description="hash of the last entry that verified")
    broken_at: int | None = Field(None, description="seq of the first entry that does not verify")
    broken_id: int | None = Field(None, description="row id of that entry")
    reason: str | None = None


class LedgerHead(BaseModel):
    tenant_id: str
    seq: int = Field(description="sequence number of the newest entry; 0 for an empty chain")
    hash: str = Field(description="its hash, which commits to every earlier entry; record it outside Lethe")
    at: str | None = Field(description="its timestamp (ISO 8601, as hashed)")
    checkpoint: CheckpointRead | None = Field(None, description="the head signed with the server's Ed25519 key")


class CheckpointRead(BaseModel):
    tenant_id: str
    seq: int = Field(description="sequence number of the signed head (0: the empty chain)")
    head: str = Field(description="hash of entry `seq`, which commits to every earlier entry")
    signed_at: str = Field(description="ISO 8601 time of signing, as signed")
    alg: str = "Ed25519"
    key_id: str = Field(description="first 16 hex digits of SHA-256 of the raw public key")
    signature: str = Field(description="base64 Ed25519 signature of "
                           "'lethe-checkpoint/v1:<tenant_id>:<seq>:<head>:<signed_at>' (UTF-8)")
