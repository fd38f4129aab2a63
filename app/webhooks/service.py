"""Signed webhook events: recorded in the event's transaction, delivered after commit with backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import keys
from app.db import new_id, on_commit, page, session_scope, utcnow
from app.errors import LetheError, NotFound, Unprocessable, closest, did_you_mean
from app.ledger import signing
from app.settings import get_settings
from app.timestamps import rfc3339
from app.webhooks import transport
from app.webhooks.tables import Delivery, Webhook

log = logging.getLogger("lethe.webhooks")
EVENTS = ("request.completed", "request.failed", "version.promoted")
MAX_ATTEMPTS = 8
DUE = threading.Event()  # set once a transaction that queued deliveries commits: the sender loop runs at once


@dataclass(frozen=True)
class Renderer:
    """How deliveries of one event type are sent: `render(payload, delivery_id)` gives the body and headers
    (default: the signed Lethe envelope), `record(session, delivery=...)` runs after each attempt."""

    render: Callable[[dict[str, Any], int], tuple[bytes, dict[str, str]]]
    record: Callable[..., None] | None = None


_RENDERERS: dict[str, Renderer] = {}


def register_renderer(event_type: str, renderer: Renderer) -> None:
    """Send `event_type` deliveries with `renderer` (OpenDSR registers its signed status callbacks this way)."""
    _RENDERERS[event_type] = renderer


def _envelope(payload: dict[str, Any], delivery_id: int, webhook_id: str | None) -> tuple[bytes, dict[str, str]]:
    """A Lethe event as sent: the JSON envelope, signed with the endpoint's (or the callback) secret."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return body, {"Content-Type": "application/json", "User-Agent": "lethe-webhooks/1",
                  "Lethe-Signature": delivery_signature(webhook_id=webhook_id, body=body, timestamp=int(time.time())),
                  "Lethe-Event": payload["type"], "Lethe-Delivery": str(delivery_id)}


def legacy_secret(tenant_id: str) -> str:
    """The secret of webhooks registered before secrets were stored (HMAC of the identity key): derivable by
    anyone who can get a keyed hash of "webhook:<tenant>" written to the ledger, hence replaced on rotation."""
    return hmac.new(get_settings().hmac_key(), f"webhook:{tenant_id}".encode(), hashlib.sha256).hexdigest()


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _seal(secret: str, hook_id: str) -> str:
    return keys.seal(secret, label=keys.WEBHOOK_SECRETS, aad=hook_id)


def _current_secret(hook: Webhook) -> str:
    if hook.secret_enc is None:
        return legacy_secret(hook.tenant_id)
    return keys.unseal(hook.secret_enc, label=keys.WEBHOOK_SECRETS, aad=hook.id)


def signing_secrets(hook: Webhook) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one during its grace period."""
    out = [_current_secret(hook)]
    if hook.previous_secret_enc and hook.previous_expires_at and hook.previous_expires_at > utcnow():
        out.append(keys.unseal(hook.previous_secret_enc, label=keys.WEBHOOK_SECRETS, aad=hook.id))
    return out


def signature(secret: str | list[str], body: bytes, timestamp: int) -> str:
    """`Lethe-Signature` header value: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">, one v1 per secret."""
    macs = [hmac.new(s.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
            for s in ([secret] if isinstance(secret, str) else secret)]
    return f"t={timestamp}," + ",".join(f"v1={m}" for m in macs)


def callback_signature(body: bytes, timestamp: int) -> str:
    """A callback_url has no registered secret: t=<unix seconds>,kid=<key id>,ed25519=<base64 signature of
    "t.body"> with the server's Ed25519 key (GET /ledger/public-key)."""
    return f"t={timestamp},kid={signing.key_id()},ed25519={signing.sign(f'{timestamp}.'.encode() + body)}"


def delivery_signature(*, webhook_id: str | None, body: bytes, timestamp: int) -> str:
    """The `Lethe-Signature` of one delivery: its webhook's secrets, or the server key for a callback_url."""
    if webhook_id is None:
        return callback_signature(body, timestamp)
    with session_scope(readonly=True) as session:
        hook = session.get(Webhook, webhook_id)
        if hook is None:
            raise NotFound(f"no webhook {webhook_id}")
        return signature(signing_secrets(hook), body, timestamp)


def check_url(url: str) -> str:
    """http(s) only; every address the host resolves to must be public unless a setting allows private ones."""
    transport.resolve(url)
    return url


def create(session: Session, *, tenant_id: str, url: str, events: list[str]) -> tuple[Webhook, str]:
    """Register an endpoint for some event types; returns it with its new random secret (shown once)."""
    bad = sorted(set(events) - set(EVENTS))
    if bad or not events:
        suggestions = sorted({s for b in bad for s in closest(b, EVENTS)})
        raise Unprocessable(f"events must be a non-empty subset of {list(EVENTS)}; unknown: {bad}"
                            f"{did_you_mean(suggestions)}", choices=list(EVENTS), suggestions=suggestions)
    secret = _new_secret()
    hook = Webhook(id=new_id(), tenant_id=tenant_id, url=check_url(url), events=sorted(set(events)))
    hook.secret_enc = _seal(secret, hook.id)
    session.add(hook)
    session.flush()
    return hook, secret


def rotate(session: Session, *, tenant_id: str, webhook_id: str) -> tuple[Webhook, str]:
    """Give a webhook a new secret (returned, shown once); the old one signs too until the grace period ends."""
    hook = _get(session, tenant_id=tenant_id, webhook_id=webhook_id)
    secret, now = _new_secret(), utcnow()
    hook.previous_secret_enc = _seal(_current_secret(hook), hook.id)
    hook.previous_expires_at = now + get_settings().webhook_grace
    hook.secret_enc, hook.rotated_at = _seal(secret, hook.id), now
    session.flush()
    return hook, secret


def list_hooks(session: Session, *, tenant_id: str) -> list[Webhook]:
    return list(session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id, Webhook.deleted_at.is_(None))
                                .order_by(Webhook.created_at)))


def _get(session: Session, *, tenant_id: str, webhook_id: str) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.tenant_id != tenant_id or hook.deleted_at is not None:
        raise NotFound(f"no webhook {webhook_id}")
    return hook


def delete(session: Session, *, tenant_id: str, webhook_id: str) -> Webhook:
    """Stop delivering to a webhook."""
    hook = _get(session, tenant_id=tenant_id, webhook_id=webhook_id)
    hook.deleted_at = utcnow()
    return hook


def emit(session: Session, *, tenant_id: str, event_type: str, data: dict[str, Any],
         callback_url: str | None = None) -> None:
    """Queue an event for the tenant's subscribed endpoints (and a request's callback URL), in this transaction."""
    event = {"type": event_type, "id": new_id(), "at": rfc3339(utcnow()), "data": data}
    targets = [(h.id, h.url) for h in list_hooks(session, tenant_id=tenant_id) if event_type in h.events]
    if callback_url:
        targets.append((None, callback_url))
    for hook_id, url in targets:
        session.add(Delivery(tenant_id=tenant_id, webhook_id=hook_id, url=url, event_id=event["id"],
                             event_type=event_type, payload=json.loads(json.dumps(event, default=str))))
    if targets:
        on_commit(session, DUE.set)


def due(*, limit: int = 50, skip_tenants: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(delivery id, tenant id) of due deliveries, oldest first, other than those of `skip_tenants`."""
    q = select(Delivery.id, Delivery.tenant_id).where(
        Delivery.delivered_at.is_(None), Delivery.attempts < MAX_ATTEMPTS, Delivery.next_at <= utcnow())
    if skip_tenants:
        q = q.where(Delivery.tenant_id.not_in(skip_tenants))
    with session_scope(readonly=True) as session:
        return [(i, t) for i, t in session.execute(q.order_by(Delivery.id).limit(limit))]


def claim(*, delivery_id: int) -> bool:
    """Take a due delivery for one attempt (its next_at moves past the attempt's deadline); False if taken."""
    now = utcnow()
    lease = now + timedelta(seconds=get_settings().webhook_deadline + 30)
    with session_scope() as session:
        claimed = session.execute(
            update(Delivery).where(Delivery.id == delivery_id, Delivery.delivered_at.is_(None),
                                   Delivery.next_at <= now).values(next_at=lease)
            .execution_options(synchronize_session=False)).rowcount
    return claimed == 1


def deliver_one(*, delivery_id: int) -> bool:
    """POST one claimed delivery within LETHE_WEBHOOK_DEADLINE and record the attempt; True if delivered."""
    with session_scope(readonly=True) as session:
        d = session.get(Delivery, delivery_id)
        webhook_id, url, payload = d.webhook_id, d.url, d.payload
    status, error = None, None
    custom = _RENDERERS.get(str(payload.get("type", "")))
    try:
        body, headers = custom.render(payload, delivery_id) if custom else _envelope(payload, delivery_id,
                                                                                     webhook_id)
        # checked again at send time (DNS may have changed since registration), and sent to the checked address
        status = transport.post(url, content=body, headers=headers, deadline=get_settings().webhook_deadline)
    except (transport.DeliveryFailed, LetheError) as exc:
        error = str(getattr(exc, "detail", None) or exc)[:500]
    with session_scope() as session:
        d = session.get(Delivery, delivery_id)
        d.attempts += 1
        d.last_status, d.last_error = status, error
        delivered = status is not None and 200 <= status < 300
        if delivered:
            d.delivered_at = utcnow()
        else:
            d.next_at = utcnow() + timedelta(seconds=min(2 ** d.attempts, 3600))
        if custom is not None and custom.record is not None:
            custom.record(session, delivery=d)  # e.g. each OpenDSR delivery attempt in the ledger
    return delivered


def deliver_due(*, limit: int = 50) -> int:
    """POST due deliveries one after another (the relay's pool sends them in parallel instead); failures back off
    exponentially until MAX_ATTEMPTS. Returns deliveries made."""
    return sum(deliver_one(delivery_id=i) for i, _ in due(limit=limit) if claim(delivery_id=i))


def deliveries(session: Session, *, tenant_id: str, limit: int = 100) -> tuple[list[Delivery], int]:
    q = select(Delivery).where(Delivery.tenant_id == tenant_id)
    return page(session, q, Delivery.id.desc(), limit=limit)
