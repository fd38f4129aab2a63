"""API keys, scopes and the caller's tenant."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from app.db import session_scope
from app.errors import Forbidden, RateLimited, Unauthorized
from app.settings import get_settings
from app.tenants.tables import ApiKey

SCOPES = ("read", "forget", "models", "admin", "operator")
OPERATOR = "operator"  # the deployment's: creates tenants and keys of other tenants; not part of a tenant's admin


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ("admin" in self.scopes and scope != OPERATOR)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "lethe_" + secrets.token_urlsafe(32)


class TokenBuckets:
    """Per-key token buckets, in this process's memory: each API process (uvicorn worker) limits on its own,
    so N processes allow N times LETHE_RATE_LIMIT_PER_SECOND. Buckets are refilled lazily on use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, monotonic time)

    def wait(self, key_id: str, *, rate: float, burst: int) -> float:
        """Seconds until `key_id` has a token again (0.0 when it has one), without taking it."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

    def take(self, key_id: str, *, rate: float, burst: int) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()


BUCKETS = TokenBuckets()


def rate_limit(caller: Caller) -> None:
    """429 with Retry-After once the caller's key has spent its burst faster than the per-second rate."""
    settings = get_settings()
    if settings.rate_limit_per_second <= 0:
        return
    wait = BUCKETS.take(caller.key_id, rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst)
    if wait > 0:
        raise RateLimited(f"rate limit of this API key exceeded ({settings.rate_limit_per_second:g}/s, burst "
                          f"{settings.rate_limit_burst}); retry in {wait:.1f} s", retry_after=wait)


def bearer_token(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header value, or None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def live_caller(token: str) -> Caller | None:
    """The caller a key belongs to, or None when it is unknown or revoked.

    Reads from its own read-only session, so a writing request takes SQLite's write lock only when it writes.
    """
    with session_scope(readonly=True) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
        if row is None or row.revoked_at is not None:
            return None
        return Caller(tenant_id=row.tenant_id, key_id=row.id, scopes=frozenset(row.scopes))


def authenticate(request: Request) -> Caller:
    """Resolve the bearer key to its tenant and scopes; 401 when missing, unknown or revoked; 429 once the
    client's address has presented LETHE_AUTH_FAILURE_BURST wrong keys faster than the refill rate."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise Unauthorized("missing bearer API key (Authorization: Bearer <key>)")
    settings = get_settings()
    address = request.client.host if request.client else "-"
    rate, burst = settings.auth_failures_per_minute / 60, settings.auth_failure_burst
    failures: TokenBuckets = request.app.state.auth_failures  # per client address: wrong keys presented
    wait = failures.wait(address, rate=rate, burst=burst)
    if wait > 0:  # refused before the key is even looked up: guessing gets no answer
        raise RateLimited(f"too many failed authentications from this address; retry in {wait:.0f} s",
                          retry_after=wait)
    caller = live_caller(token)
    if caller is None:
        failures.take(address, rate=rate, burst=burst)
        raise Unauthorized("unknown or revoked API key")
    rate_limit(caller)
    return caller


def require(scope: str):  # noqa: ANN201 - returns a FastAPI dependency
    """Dependency: the authenticated caller, who must hold `scope` (admin holds all)."""

    def dependency(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if not caller.allows(scope):
            raise Forbidden(f"this API key lacks the '{scope}' scope")
        return caller

    dependency.scope = scope  # type: ignore[attr-defined] - read by app.openapi to document the 403
    return dependency


Reader = Annotated[Caller, Depends(require("read"))]
Forgetter = Annotated[Caller, Depends(require("forget"))]
Modeller = Annotated[Caller, Depends(require("models"))]
Admin = Annotated[Caller, Depends(require("admin"))]
