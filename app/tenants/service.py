"""Tenants and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import OPERATOR, SCOPES, generate_key, hash_key
from app.db import utcnow
from app.errors import Conflict, Forbidden, NotFound, Unprocessable, closest, did_you_mean
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


def tenant_for_new_key(session: Session, *, caller_tenant_id: str, name: str | None, operator: bool) -> str:
    """The tenant a key created through the API belongs to: the caller's own; any other (created when new) only
    for an `operator` key. Everyone else gets one answer whether that tenant exists or not."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name)) if name else None
    if not name or (tenant is not None and tenant.id == caller_tenant_id):
        return caller_tenant_id
    if not operator:
        raise Forbidden(f"keys of tenant '{name}': creating tenants and keys of other tenants needs the "
                        f"'{OPERATOR}' scope")
    return (tenant or get_or_create_tenant(session, name=name)).id


def create_key(session: Session, *, tenant_id: str, scopes: list[str], name: str | None = None,
               plaintext: str | None = None, grantor_scopes: frozenset[str] | None = None) -> tuple[ApiKey, str]:
    """Store a new key's hash; return the row and the key, which is never shown again."""
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        suggestions = sorted({s for b in bad for s in closest(b, SCOPES)})
        raise Unprocessable(f"scopes must be a non-empty subset of {list(SCOPES)}; unknown: {bad}"
                            f"{did_you_mean(suggestions)}", choices=list(SCOPES), suggestions=suggestions)
    if OPERATOR in scopes and grantor_scopes is not None and OPERATOR not in grantor_scopes:
        raise Forbidden(f"only an '{OPERATOR}' key grants the '{OPERATOR}' scope")
    key = plaintext or generate_key()
    row = ApiKey(tenant_id=tenant_id, key_hash=hash_key(key), prefix=key[:12], name=name,
                 scopes=sorted(set(scopes)))
    session.add(row)
    session.flush()
    return row, key


def ensure_bootstrap_key(session: Session, *, key: str) -> ApiKey:
    """Make `key` an admin and operator key of the default tenant (idempotent): the deployment's own key."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is not None:
        if OPERATOR not in row.scopes:  # bootstrap keys made before the operator scope existed
            row.scopes = sorted({*row.scopes, OPERATOR})
        return row
    tenant = get_or_create_tenant(session, name=DEFAULT_TENANT)
    row, _ = create_key(session, tenant_id=tenant.id, scopes=["admin", OPERATOR], name="bootstrap", plaintext=key)
    return row


def list_keys(session: Session, *, tenant_id: str) -> list[ApiKey]:
    """The tenant's keys, newest first."""
    return list(session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at.desc())
    ))


def all_keys(session: Session, *, tenant: str | None = None) -> list[tuple[ApiKey, str]]:
    """Operator view (CLI): every key with its tenant's name, optionally of one tenant, newest first."""
    q = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant is not None:
        q = q.where(Tenant.name == tenant)
    return [(k, n) for k, n in session.execute(q.order_by(ApiKey.created_at.desc()))]


def revoke_any_key(session: Session, *, key_id: str) -> ApiKey:
    """Operator (CLI): revoke a key of any tenant by id or by its printed prefix."""
    row = session.get(ApiKey, key_id)
    if row is None:
        matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix == key_id)))
        if len(matches) > 1:
            raise Conflict(f"prefix {key_id} names {len(matches)} keys; give the key id")
        row = matches[0] if matches else None
    if row is None:
        raise NotFound(f"no API key {key_id}")
    row.revoked_at = row.revoked_at or utcnow()
    session.flush()
    return row


def revoke_key(session: Session, *, tenant_id: str, key_id: str) -> ApiKey:
    """Revoke one of the tenant's keys."""
    row = session.get(ApiKey, key_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"no API key {key_id}")
    row.revoked_at = row.revoked_at or utcnow()
    session.flush()
    return row
