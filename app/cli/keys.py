"""`lethe keys`: API keys in the configured database (operator commands; keys are stored hashed)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from app.cli.output import JSON, console, emit

keys = typer.Typer(help="API keys in the configured database (operator commands; keys are stored hashed).",
                   no_args_is_help=True)


def _key_read(row: Any, tenant: str) -> dict[str, Any]:
    from app.tenants.schemas import KeyRead

    return KeyRead.model_validate(row, from_attributes=True).model_dump(mode="json") | {"tenant": tenant}


@keys.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="tenant name; created if new")] = "default",
                scopes: Annotated[str, typer.Option(help="read,forget,models,admin,operator")] = "read",
                name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
                as_json: Annotated[bool, JSON] = False) -> None:
    """Create a key; the key itself is printed once, alone on the last line (--json: in "key")."""
    from app.db import session_scope
    from app.tenants import service

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    with session_scope() as session:
        t = service.get_or_create_tenant(session, name=tenant)
        row, key = service.create_key(session, tenant_id=t.id, scopes=wanted, name=name)
        info = f"key {row.id} (prefix {row.prefix}) for tenant '{tenant}', scopes {','.join(row.scopes)}"
        document = _key_read(row, tenant) | {"key": key}
    if as_json:
        emit(document)
        return
    console.print(info)
    print(key, flush=True)  # plain, last, on its own line: `lethe keys create ... | tail -n1`


@keys.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
              as_json: Annotated[bool, JSON] = False) -> None:
    """List keys (id, tenant, prefix, scopes, created, revoked); never the keys themselves."""
    from rich.table import Table

    from app.db import session_scope
    from app.tenants import service

    table = Table("id", "tenant", "prefix", "name", "scopes", "created", "revoked")
    rows = []
    with session_scope(readonly=True) as session:
        for row, tenant_name in service.all_keys(session, tenant=tenant):
            rows.append(_key_read(row, tenant_name))
            table.add_row(row.id, tenant_name, row.prefix, row.name or "", ",".join(row.scopes),
                          f"{row.created_at:%Y-%m-%d %H:%M}",
                          f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "")
    emit(rows) if as_json else console.print(table)


@keys.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (or its prefix)")],
                as_json: Annotated[bool, JSON] = False) -> None:
    """Revoke a key at once: later requests with it get 401."""
    from app.db import session_scope
    from app.tenants import service
    from app.tenants.tables import Tenant

    with session_scope() as session:
        row = service.revoke_any_key(session, key_id=key_id)
        info = f"revoked key {row.id} (prefix {row.prefix}) at {row.revoked_at:%Y-%m-%d %H:%M:%S}"
        document = _key_read(row, session.get(Tenant, row.tenant_id).name)
    emit(document) if as_json else console.print(info)
