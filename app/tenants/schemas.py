from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class KeyCreate(BaseModel):
    scopes: list[str] = Field(min_length=1)
    tenant: str | None = Field(None, description="Tenant name; created if new. Default: the caller's tenant.")
    name: str | None = None


class KeyRead(BaseModel):
    id: str
    tenant_id: str
    prefix: str
    name: str | None
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(description="The API key; shown only in this response.")
