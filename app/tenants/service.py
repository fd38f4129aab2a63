"""Tenants and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import SCOPES, generate_key, hash_key
from app.db import utcnow
from app.errors import NotFound, Unprocessable
from app.tenants.tables import ApiKey, Tenant

DEFAULT_TENANT = "default"


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    """The tenant of that name, created on first use."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, *, tenant_id: str, scopes: list[str], name: str | None = None,
               plaintext: str | None = None) -> tuple[ApiKey, str]:
    """Store a new key's hash; return the row and the key, which is never shown again."""
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise Unprocessable(f"scopes must be a non-empty subset of {list(SCOPES)}; unknown: {bad}")
    key = plaintext or generate_key()
    row = ApiKey(tenant_id=tenant_id, key_hash=hash_key(key), prefix=key[:12], name=name,
                 scopes=sorted(set(scopes)))
    session.add(row)
    session.flush()
    return row, key


def ensure_bootstrap_key(session: Session, *, key: str) -> ApiKey:
    """Make `key` an admin key of the default tenant (idempotent)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is not None:
        return row
    tenant = get_or_create_tenant(session, name=DEFAULT_TENANT)
    row, _ = create_key(session, tenant_id=tenant.id, scopes=["admin"], name="bootstrap", plaintext=key)
    return row


def list_keys(session: Session, *, tenant_id: str) -> list[ApiKey]:
    """The tenant's keys, newest first."""
    return list(session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at.desc())
    ))


def revoke_key(session: Session, *, tenant_id: str, key_id: str) -> ApiKey:
    """Revoke one of the tenant's keys."""
    row = session.get(ApiKey, key_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"no API key {key_id}")
    row.revoked_at = row.revoked_at or utcnow()
    session.flush()
    return row
