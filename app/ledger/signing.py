"""The server's Ed25519 key: signed ledger checkpoints, deletion certificates and callback deliveries.

An auditor needs only the public key (GET /ledger/public-key) to check any of these offline. Checkpoint
messages are one plain line, so `openssl pkeyutl -verify -rawin` checks them too:

    lethe-checkpoint/v1:<tenant_id>:<seq>:<head>:<signed_at>

When checkpoints are made (cheaply: per head, never per entry): in every transaction that closes a request or
a job (one INSERT and a ~0.1 ms signature, in the transaction that commits the entries), in every POST /forget
answer, and when someone reads the head (GET /ledger/head, /ledger/checkpoints, a certificate) only if it moved
since the last checkpoint. Appends themselves stay unsigned, so the hot path pays nothing per entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import count, session_scope, utcnow
from app.ledger import chain
from app.ledger.tables import Checkpoint
from app.private_files import private_file
from app.settings import get_settings
from app.timestamps import rfc3339

DONE = "ledger_checkpoint_done"  # session.info: {tenant_id: checkpoint} signed in this transaction


@lru_cache
def _key(path: Path) -> Ed25519PrivateKey:
    pem = private_file(path, lambda: Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise RuntimeError(f"ledger signing key {path} must be an Ed25519 private key (PEM)")
    return key


def private_key() -> Ed25519PrivateKey:
    """The signing key at LETHE_LEDGER_KEY_PATH, generated 0600 there when missing."""
    return _key(get_settings().ledger_key)


def public_pem() -> str:
    """The public key as PEM (SubjectPublicKeyInfo): all an auditor or a callback receiver needs."""
    return private_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(public: Ed25519PublicKey | None = None) -> str:
    """First 16 hex digits of SHA-256 over the raw public key: names the key that signed something."""
    pub = public or private_key().public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(message: bytes) -> str:
    """Base64 Ed25519 signature of `message`."""
    return base64.b64encode(private_key().sign(message)).decode()


def verify(message: bytes, signature: str, public_key_pem: str | bytes) -> bool:
    """True when `signature` (base64) is the key's signature of `message`; needs no Lethe secret."""
    pub = serialization.load_pem_public_key(public_key_pem.encode() if isinstance(public_key_pem, str)
                                            else public_key_pem)
    if not isinstance(pub, Ed25519PublicKey):
        return False
    try:
        pub.verify(base64.b64decode(signature), message)
        return True
    except (InvalidSignature, ValueError):
        return False


def checkpoint_message(*, tenant_id: str, seq: int, head: str, signed_at: str) -> bytes:
    """The exact bytes a checkpoint signs."""
    return f"lethe-checkpoint/v1:{tenant_id}:{seq}:{head}:{signed_at}".encode()


def checkpoint_read(cp: Checkpoint) -> dict[str, Any]:
    """A checkpoint as the API shows it."""
    return {"tenant_id": cp.tenant_id, "seq": cp.seq, "head": cp.head, "signed_at": cp.signed_at,
            "alg": "Ed25519", "key_id": cp.key_id, "signature": cp.signature}


def verify_checkpoint(cp: dict[str, Any], public_key_pem: str | bytes) -> bool:
    """True when a checkpoint (as the API shows it) carries a valid signature of this key."""
    msg = checkpoint_message(tenant_id=cp["tenant_id"], seq=int(cp["seq"]), head=cp["head"], signed_at=cp["signed_at"])
    return verify(msg, cp["signature"], public_key_pem)


def _at(session: Session, *, tenant_id: str, seq: int) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.tenant_id == tenant_id, Checkpoint.seq == seq))


def checkpoint(session: Session, *, tenant_id: str) -> dict[str, Any]:
    """Sign the tenant's chain head as this (writing) transaction will commit it; one checkpoint per head."""
    appended = session.info.get(chain.HELD, {}).get(tenant_id) is not None
    seq, head = chain.tip(session, tenant_id=tenant_id)
    done = session.info.setdefault(DONE, {})
    if tenant_id in done and done[tenant_id]["seq"] == seq:  # signed already in this transaction
        return done[tenant_id]
    # A head this transaction appended has no checkpoint yet (nobody else can see it): no need to look.
    existing = None if appended else _at(session, tenant_id=tenant_id, seq=seq)
    if existing is not None:
        return checkpoint_read(existing)
    signed_at = rfc3339(utcnow())
    cp = Checkpoint(tenant_id=tenant_id, seq=seq, head=head, signed_at=signed_at, key_id=key_id(),
                    signature=sign(checkpoint_message(tenant_id=tenant_id, seq=seq, head=head, signed_at=signed_at)))
    session.add(cp)
    done[tenant_id] = checkpoint_read(cp)
    return done[tenant_id]


def current_checkpoint(session: Session, *, tenant_id: str) -> dict[str, Any]:
    """For read-only sessions: the head's checkpoint, made in a short transaction of its own if the head moved.

    (A writing transaction calls `checkpoint` instead: on SQLite a second writer would wait for it.)"""
    seq, _ = chain.tip(session, tenant_id=tenant_id)
    existing = _at(session, tenant_id=tenant_id, seq=seq)
    if existing is not None:
        return checkpoint_read(existing)
    for _attempt in range(3):
        try:
            with session_scope() as writer:
                return checkpoint(writer, tenant_id=tenant_id)
        except IntegrityError:  # a concurrent reader signed the same head first: read theirs
            with session_scope(readonly=True) as reader:
                seq, _ = chain.tip(reader, tenant_id=tenant_id)
                existing = _at(reader, tenant_id=tenant_id, seq=seq)
                if existing is not None:
                    return checkpoint_read(existing)
    raise RuntimeError("could not sign the ledger head")  # only under a storm of appends and reads


def latest(session: Session, *, tenant_id: str) -> dict[str, Any] | None:
    """The newest stored checkpoint, or None."""
    cp = session.scalar(select(Checkpoint).where(Checkpoint.tenant_id == tenant_id)
                        .order_by(Checkpoint.seq.desc()).limit(1))
    return checkpoint_read(cp) if cp else None


def page_checkpoints(session: Session, *, tenant_id: str, after: int = -1, limit: int = 100) -> tuple[
        list[dict[str, Any]], int]:
    """Checkpoints in chain order after a sequence number, the current head signed first if it moved."""
    current = current_checkpoint(session, tenant_id=tenant_id)
    q = select(Checkpoint).where(Checkpoint.tenant_id == tenant_id)
    total = count(session, q)
    items = [checkpoint_read(r) for r in session.scalars(q.where(Checkpoint.seq > after)
                                                          .order_by(Checkpoint.seq).limit(limit))]
    if _at(session, tenant_id=tenant_id, seq=current["seq"]) is None:
        # signed after this read's snapshot began (SQLite): it is the newest, so it ends the last page
        total += 1
        if len(items) < limit and current["seq"] > after:
            items.append(current)
    return items, total


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """What a document signature covers: canonical JSON of every field but `signature`."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_certificate(session: Session, *, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A deletion certificate: `body` plus the latest signed checkpoint, signed with Ed25519."""
    document = chain.canonical(body | {"checkpoint": current_checkpoint(session, tenant_id=tenant_id)})
    return {**document, "signature": {
        "alg": "Ed25519", "key_id": key_id(), "value": sign(canonical_bytes(document)),
        "signed": "canonical JSON of every other field (sorted keys, no spaces); public key: GET /ledger/public-key"}}


def verify_certificate(document: dict[str, Any], public_key_pem: str | bytes) -> bool:
    """True when a certificate's Ed25519 signature is valid under this public key."""
    sig = document.get("signature") or {}
    return sig.get("alg") == "Ed25519" and verify(canonical_bytes(document), sig.get("value", ""), public_key_pem)
