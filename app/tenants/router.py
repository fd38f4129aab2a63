from __future__ import annotations

from fastapi import APIRouter

from app.auth import OPERATOR, Admin
from app.db import SessionDep
from app.paging import Page, page_of, shown_once
from app.tenants import service
from app.tenants.schemas import KeyCreate, KeyCreated, KeyRead

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, caller: Admin, session: SessionDep) -> KeyCreated:
    """Create an API key with the given scopes; the key is shown once, in this answer only. Keys of another tenant
    need the 'operator' scope."""
    tenant_id = service.tenant_for_new_key(session, caller_tenant_id=caller.tenant_id, name=body.tenant,
                                           operator=caller.allows(OPERATOR))
    row, key = service.create_key(session, tenant_id=tenant_id, scopes=body.scopes, name=body.name,
                                  grantor_scopes=caller.scopes)
    return shown_once(session, KeyCreated, row, key=key)


@router.get("", response_model=Page[KeyRead])
def list_keys(caller: Admin, session: SessionDep) -> Page[KeyRead]:
    """The tenant's API keys (prefix, name, scopes, creation and revocation times; never the key)."""
    return page_of(KeyRead, service.list_keys(session, tenant_id=caller.tenant_id))


@router.delete("/{key_id}", response_model=KeyRead)
def revoke_key(key_id: str, caller: Admin, session: SessionDep) -> KeyRead:
    """Revoke one of the tenant's API keys; it is refused from then on."""
    row = service.revoke_key(session, tenant_id=caller.tenant_id, key_id=key_id)
    session.commit()
    return KeyRead.model_validate(row, from_attributes=True)
