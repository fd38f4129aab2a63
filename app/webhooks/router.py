from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.auth import Admin, Reader
from app.db import SessionDep
from app.paging import Page, page_of, shown_once
from app.timestamps import Timestamp
from app.webhooks import service

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


class WebhookCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"url": "https://governance.example.com/lethe", "events": ["request.completed", "request.failed"]}]})
    url: str = Field(max_length=2000)
    events: list[str] = Field(min_length=1)


class WebhookRead(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: Timestamp
    rotated_at: Timestamp | None = None
    legacy_secret: bool = Field(False, description="registered before per-webhook secrets: it signs with the old "
                                "tenant-derived secret, which is not safe; rotate it")


class WebhookCreated(WebhookRead):
    secret: str = Field(description="Verify `Lethe-Signature` with this; shown only once, here.")


class WebhookRotated(WebhookCreated):
    previous_valid_until: Timestamp | None = Field(
        description="until then deliveries carry a second v1= signature made with the previous secret")


class DeliveryRead(BaseModel):
    id: int
    webhook_id: str | None
    url: str
    event_type: str
    event_id: str
    attempts: int
    last_status: int | None
    last_error: str | None
    delivered_at: Timestamp | None
    payload: dict[str, Any]


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(body: WebhookCreate, caller: Admin, session: SessionDep) -> WebhookCreated:
    """Register an http(s) URL to receive the chosen events, signed with a secret shown once."""
    hook, secret = service.create(session, tenant_id=caller.tenant_id, url=body.url, events=body.events)
    return shown_once(session, WebhookCreated, hook, secret=secret)


@router.get("", response_model=Page[WebhookRead])
def list_webhooks(caller: Reader, session: SessionDep) -> Page[WebhookRead]:
    """The tenant's webhooks and the events each receives."""
    return page_of(WebhookRead, service.list_hooks(session, tenant_id=caller.tenant_id))


@router.get("/deliveries", response_model=Page[DeliveryRead])
def list_deliveries(caller: Reader, session: SessionDep) -> Page[DeliveryRead]:
    """Recent webhook deliveries: event, attempts, last HTTP status or error."""
    rows, total = service.deliveries(session, tenant_id=caller.tenant_id)
    return page_of(DeliveryRead, rows, total=total)


@router.delete("/{webhook_id}", response_model=WebhookRead)
def delete_webhook(webhook_id: str, caller: Admin, session: SessionDep) -> WebhookRead:
    """Stop delivering to this webhook."""
    hook = service.delete(session, tenant_id=caller.tenant_id, webhook_id=webhook_id)
    session.commit()
    return WebhookRead.model_validate(hook, from_attributes=True)


@router.post("/{webhook_id}/rotate", response_model=WebhookRotated)
def rotate_webhook(webhook_id: str, caller: Admin, session: SessionDep) -> WebhookRotated:
    """A new signing secret, shown once; the old one keeps signing for LETHE_WEBHOOK_ROTATION_GRACE_HOURS."""
    hook, secret = service.rotate(session, tenant_id=caller.tenant_id, webhook_id=webhook_id)
    return shown_once(session, WebhookRotated, hook, secret=secret, previous_valid_until=hook.previous_expires_at)
