"""API keys, scopes and the caller's tenant."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from app.db import session_scope
from app.errors import Forbidden, Unauthorized
from app.tenants.tables import ApiKey

SCOPES = ("read", "forget", "models", "admin")


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "lethe_" + secrets.token_urlsafe(32)


def authenticate(request: Request) -> Caller:
    """Resolve the bearer key to its tenant and scopes; 401 when missing, unknown or revoked.

    Reads from its own read-only session, so a writing request takes SQLite's write lock only when it writes.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer API key (Authorization: Bearer <key>)")
    with session_scope(readonly=True) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token.strip())))
        if row is None or row.revoked_at is not None:
            raise Unauthorized("unknown or revoked API key")
        return Caller(tenant_id=row.tenant_id, key_id=row.id, scopes=frozenset(row.scopes))


def require(scope: str):  # noqa: ANN201 - returns a FastAPI dependency
    """Dependency: the authenticated caller, who must hold `scope` (admin holds all)."""

    def dependency(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if not caller.allows(scope):
            raise Forbidden(f"this API key lacks the '{scope}' scope")
        return caller

    return dependency


Reader = Annotated[Caller, Depends(require("read"))]
Forgetter = Annotated[Caller, Depends(require("forget"))]
Modeller = Annotated[Caller, Depends(require("models"))]
Admin = Annotated[Caller, Depends(require("admin"))]
