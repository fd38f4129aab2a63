"""Idempotency-Key on every POST that has no key handling of its own (POST /forget and the OpenDSR routes do).

A key is claimed (a row, unique per API key and Idempotency-Key: a replay is only ever shown to the credential
that made the first request, whose scopes allowed it) before the route runs. The route's own transaction marks
the claim `committed` (a `before_commit` hook on the request's session), so a write and its claim commit or
roll back together; the response is stored once sent. Then, within LETHE_IDEMPOTENCY_TTL_HOURS:

- same key, same method, path and body → the first response replayed (with `Idempotent-Replayed: true`);
- same key, another method, path or body → 409;
- same key while the first request is still running → waits up to `WAIT_SECONDS` for it, then 409;
- a first request that failed (any non-2xx) or crashed before committing releases its key: retry with it.

A process that dies between its commit and storing the response leaves a `committed` claim without a
response: a retry then gets 409 (the work was done once; look the object up) rather than doing it twice.
Responses that carry a secret shown only once (POST /keys, POST /webhooks) are never stored: their retry gets
409 too. Multipart bodies are compared without their random boundary, so a retried upload replays.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, Text, UniqueConstraint, delete, event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import bearer_token, live_caller
from app.columns import CreatedAt, UuidPk
from app.db import Base, session_scope, utcnow
from app.errors import MEDIA_TYPE, problem
from app.settings import get_settings

HEADER = b"idempotency-key"
MAX_KEY = 200
WAIT_SECONDS = 5.0
# Routes with their own idempotency (stored with the request itself, inside its transaction).
OWN_HANDLING = ("/forget", "/opendsr/")
SECRET_RESPONSES = ("/keys", "/webhooks")
STORED_HEADERS = (b"content-type", b"location")


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("api_key_id", "key"),)
    id: Mapped[UuidPk]
    api_key_id: Mapped[str] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(MAX_KEY))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(2000))
    state: Mapped[str] = mapped_column(String(12))  # pending | committed | done
    body_hash: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[list[Any]] = mapped_column(default=list)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]


@event.listens_for(Session, "before_commit")
def _mark_committed(session: Session) -> None:
    """The route's transaction carries its claim: if the writes commit, so does `committed`."""
    claim = session.info.get("idempotency_claim")
    if claim:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.id == claim, IdempotencyKey.state == "pending")
                        .values(state="committed"))


# --- claims ---------------------------------------------------------------------------------------------------

def _api_key_of(scope: Scope) -> str | None:
    token = bearer_token(dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1"))
    caller = live_caller(token) if token else None
    return caller.key_id if caller else None


def expired(created_at: datetime) -> bool:
    """Whether a key first used at `created_at` is past LETHE_IDEMPOTENCY_TTL_HOURS (free to be used again)."""
    return created_at <= utcnow() - timedelta(hours=get_settings().idempotency_ttl_hours)


def own_handling(path: str) -> bool:
    """Routes that keep their keys with their own records, inside their own transaction."""
    return any(path == p or path.startswith(p) for p in OWN_HANDLING)


def _claim(api_key_id: str, key: str, method: str, path: str) -> tuple[str | None, IdempotencyKey | None]:
    """(claim id, None) when this request now owns the key, else (None, the existing row)."""
    for _ in range(3):
        try:
            with session_scope() as session:
                prior = session.scalar(select(IdempotencyKey).where(IdempotencyKey.api_key_id == api_key_id,
                                                                    IdempotencyKey.key == key))
                if prior is not None and not expired(prior.created_at):
                    session.expunge(prior)
                    return None, prior
                if prior is not None:  # expired: the key is free again
                    session.delete(prior)
                    session.flush()
                row = IdempotencyKey(api_key_id=api_key_id, key=key, method=method, path=path, state="pending")
                session.add(row)
                session.flush()
                return row.id, None
        except IntegrityError:
            continue  # a concurrent request claimed it first: read its row
    raise RuntimeError("idempotency claim kept conflicting")  # pragma: no cover - needs three lost races


def _load(claim_id: str) -> IdempotencyKey | None:
    with session_scope(readonly=True) as session:
        row = session.get(IdempotencyKey, claim_id)
        if row is not None:
            session.expunge(row)
        return row


def _finish(claim_id: str, *, body_hash: str, status: int, headers: list[list[str]], body: bytes | None) -> None:
    """Store a 2xx response (`body` None: a secret, not stored; the claim stays `committed`), else release."""
    if not 200 <= status < 300:  # a failed request changed nothing (unless it committed first)
        _release(claim_id)
        return
    values: dict[str, Any] = {"body_hash": body_hash, "status": status}
    if body is not None:
        values |= {"state": "done", "response_headers": headers, "response_body": body.decode()}
    else:
        values["state"] = "committed"
    with session_scope() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.id == claim_id).values(**values))


def _release(claim_id: str) -> None:
    """Free the key of a request that did not commit: it may be used again."""
    with session_scope() as session:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == claim_id,
                                                     IdempotencyKey.state == "pending"))


# --- middleware -----------------------------------------------------------------------------------------------

class Idempotency:
    """ASGI middleware applying the rules above to POSTs carrying an Idempotency-Key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key_raw = dict(scope.get("headers", [])).get(HEADER) if scope["type"] == "http" else None
        path = scope.get("path", "")
        if key_raw is None or scope["method"] != "POST" or own_handling(path):
            await self.app(scope, receive, send)
            return
        key = key_raw.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY:
            await _send_problem(send, problem("unprocessable", f"Idempotency-Key must be 1 to {MAX_KEY} characters"))
            return
        api_key_id = await run_in_threadpool(_api_key_of, scope)
        if api_key_id is None:  # the route answers 401 itself
            await self.app(scope, receive, send)
            return
        claim_id, prior = await run_in_threadpool(_claim, api_key_id, key, scope["method"], path)
        if claim_id is None:
            await self._answer_duplicate(prior, scope, receive, send)
            return
        await self._first(claim_id, scope, receive, send)

    async def _first(self, claim_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        digest = BodyDigest(scope)
        status = 500
        headers: list[list[str]] = []
        chunks: list[bytes] = []

        async def hashing_receive() -> Message:
            msg = await receive()
            if msg["type"] == "http.request":
                digest.update(msg.get("body", b""))
            return msg

        async def capturing_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                headers.extend([k.decode("latin-1"), v.decode("latin-1")] for k, v in msg.get("headers", [])
                               if k.lower() in STORED_HEADERS)
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
            await send(msg)

        scope.setdefault("state", {})["idempotency_claim"] = claim_id
        try:
            await self.app(scope, hashing_receive, capturing_send)
        except BaseException:
            await run_in_threadpool(_release, claim_id)
            raise
        secret = any(scope["path"].startswith(p) for p in SECRET_RESPONSES)
        await run_in_threadpool(lambda: _finish(claim_id, body_hash=digest.hexdigest(), status=status,
                                                headers=headers, body=None if secret else b"".join(chunks)))

    async def _answer_duplicate(self, prior: IdempotencyKey | None, scope: Scope, receive: Receive,
                                send: Send) -> None:
        digest = BodyDigest(scope)
        while True:  # the body must be read to compare it
            msg = await receive()
            if msg["type"] == "http.request":
                digest.update(msg.get("body", b""))
                if not msg.get("more_body", False):
                    break
            elif msg["type"] == "http.disconnect":
                return
        body_hash = digest.hexdigest()
        waited = 0.0
        while prior is not None and prior.state != "done" and prior.status is None and waited < WAIT_SECONDS:
            await asyncio.sleep(0.05)
            waited += 0.05
            prior = await run_in_threadpool(_load, prior.id)
        if prior is None:  # the first request failed and released the key while we waited: try afresh
            await _send_problem(send, problem("idempotency-conflict", "the first request with this Idempotency-Key "
                                              "failed meanwhile; retry"))
            return
        if prior.method != scope["method"] or prior.path != scope["path"] or (
                prior.body_hash is not None and prior.body_hash != body_hash):
            await _send_problem(send, problem("idempotency-conflict",
                                              "this Idempotency-Key was used with a different request"))
            return
        if prior.state != "done":
            detail = ("a request with this Idempotency-Key is still in progress; retry later"
                      if prior.state == "pending" else
                      "the request with this Idempotency-Key was carried out once; its response held a secret "
                      "shown only once, so it is not replayed" if prior.status is not None else
                      "the request with this Idempotency-Key was carried out but its response was not kept; "
                      "look the object up")
            await _send_problem(send, problem("idempotency-conflict", detail))
            return
        body = (prior.response_body or "").encode()
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in prior.response_headers]
        raw += [(b"content-length", str(len(body)).encode()), (b"idempotent-replayed", b"true")]
        await send({"type": "http.response.start", "status": prior.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


class BodyDigest:
    """SHA-256 of a streamed body; for multipart bodies with every occurrence of the boundary removed (clients
    draw a new random boundary per attempt, so a retried upload would otherwise never match)."""

    def __init__(self, scope: Scope) -> None:
        ctype = dict(scope.get("headers", [])).get(b"content-type", b"")
        _, found, boundary = ctype.partition(b"boundary=")
        self.boundary = boundary.split(b";")[0].strip(b'" ') if found else b""
        self.sha = hashlib.sha256()
        self.tail = b""

    def update(self, chunk: bytes) -> None:
        if not self.boundary:
            self.sha.update(chunk)
            return
        data = (self.tail + chunk).replace(self.boundary, b"")
        keep = len(self.boundary) - 1  # a boundary may straddle two chunks: hold back what could start one
        cut = max(0, len(data) - keep)
        self.sha.update(data[:cut])
        self.tail = data[cut:]

    def hexdigest(self) -> str:
        self.sha.update(self.tail)
        self.tail = b""
        return self.sha.hexdigest()


async def _send_problem(send: Send, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": payload["status"],
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
