from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class KeyCreate(BaseModel):
    scopes: list[str] = Field(min_length=1, max_length=4, description="read | forget | models | admin")
    tenant: str | None = Field(None, min_length=1, max_length=200, description=(
        "A new tenant's name (created with this key); default the caller's tenant. Another existing tenant is 404."))
    name: str | None = Field(None, max_length=200)


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
