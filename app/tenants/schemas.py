from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.timestamps import Timestamp


class KeyCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"scopes": ["read", "forget"], "name": "governance"}]})
    scopes: list[str] = Field(min_length=1, max_length=5, description="read | forget | models | admin | operator "
                              "(operator: only an operator key grants it)")
    tenant: str | None = Field(None, min_length=1, max_length=200, description=(
        "Default the caller's tenant. Any other tenant (created when new) needs the operator scope; without it the "
        "answer is 403 whether that tenant exists or not."))
    name: str | None = Field(None, max_length=200)


class KeyRead(BaseModel):
    id: str
    tenant_id: str
    prefix: str
    name: str | None
    scopes: list[str]
    created_at: Timestamp
    revoked_at: Timestamp | None


class KeyCreated(KeyRead):
    key: str = Field(description="The API key; shown only in this response.")
