"""Status callbacks: queued as webhook deliveries (the same outbox, retries and backoff), sent with the spec's
body and the processor's signature headers instead of an event envelope, and each attempt in the ledger."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Unprocessable
from app.ledger import service as ledger
from app.opendsr import signing
from app.opendsr.tables import OpenDsrRequest
from app.settings import get_settings
from app.webhooks import service as webhooks
from app.webhooks.tables import Delivery

EVENT = "opendsr.status"
# The protocol's names over time: OpenGDPR, OpenDSR, OpenCompliance; every party must honour the older ones.
HEADER_PREFIXES = ("X-OpenDSR", "X-OpenGDPR", "X-OpenCompliance")


def dumps(body: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def configured_domain() -> str | None:
    """The settings' processor domain, else the public URL's host."""
    settings = get_settings()
    if settings.opendsr_processor_domain:
        return settings.opendsr_processor_domain
    if settings.opendsr_public_url:
        return urlsplit(settings.opendsr_public_url).hostname or None
    return None


def current_signer(hint: str | None = None) -> Any:
    """The signing key and certificate (a development pair named after the domain is generated if missing)."""
    return signing.signer(configured_domain() or hint)


def processor_domain(hint: str | None = None) -> str:
    """The configured domain, else the certificate's CN."""
    return configured_domain() or current_signer(hint).common_name or hint or "localhost"


def signed_headers(body: bytes, *, domain_hint: str | None = None) -> dict[str, str]:
    """X-OpenDSR-Processor-Domain and X-OpenDSR-Signature (and the OpenGDPR / OpenCompliance spellings)."""
    domain = processor_domain(domain_hint)
    signature = current_signer(domain_hint).sign(body)
    headers: dict[str, str] = {}
    for prefix in HEADER_PREFIXES:
        headers[f"{prefix}-Processor-Domain"] = domain
        headers[f"{prefix}-Signature"] = signature
    return headers


def emit(session: Session, *, tenant_id: str, body: dict[str, Any]) -> None:
    """Queue one callback (body carries its status_callback_url) in the caller's transaction."""
    webhooks.emit(session, tenant_id=tenant_id, event_type=EVENT, data=body, callback_url=body["status_callback_url"])


def render(payload: dict[str, Any], delivery_id: int) -> tuple[bytes, dict[str, str]]:
    """Called by the webhook sender for OpenDSR deliveries: the spec's callback body and signature headers."""
    body = dumps(payload["data"])
    try:
        signed = signed_headers(body)
    except (RuntimeError, ValueError, OSError) as exc:  # a broken key: a failed attempt, retried, never unsigned
        raise Unprocessable(f"OpenDSR callback not signed: {exc}") from exc
    headers = {"Content-Type": "application/json", "User-Agent": "lethe-opendsr/1", "Lethe-Event": payload["type"],
               "Lethe-Delivery": str(delivery_id), **signed}
    return body, headers


def record(session: Session, *, delivery: Delivery) -> None:
    """Called by the webhook sender after each attempt at an OpenDSR callback: the attempt goes in the ledger."""
    data = delivery.payload.get("data", {})
    srid = data.get("subject_request_id")
    row_id = session.scalar(select(OpenDsrRequest.id).where(OpenDsrRequest.tenant_id == delivery.tenant_id,
                                                            OpenDsrRequest.subject_request_id == srid))
    ledger.append(session, tenant_id=delivery.tenant_id, event="opendsr.callback", subject_type="opendsr_request",
                  subject_id=row_id or srid or "", data={
                      "subject_request_id": srid, "delivery_id": delivery.id, "url": delivery.url,
                      "request_status": data.get("request_status"), "attempt": delivery.attempts,
                      "http_status": delivery.last_status, "error": delivery.last_error,
                      "delivered": delivery.delivered_at is not None,
                      "next_attempt_at": None if delivery.delivered_at else str(delivery.next_at)})


webhooks.register_renderer(EVENT, webhooks.Renderer(render=render, record=record))
