"""`lethe ledger verify`: check the tamper-evident ledger against what you kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli import output
from app.cli.output import KEY, LEDGER_BROKEN, URL, console, emit, say_error

ledger = typer.Typer(help="The tamper-evident ledger: check it against what you kept.", no_args_is_help=True)


def _load_json(path: Path) -> Any:
    """A JSON document, or JSON lines (one kept answer per line)."""
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@ledger.command("verify")
def ledger_verify(
        against: Annotated[Path, typer.Option("--against", exists=True, dir_okay=False, help=(
            "JSON (or JSON lines) you kept: POST /forget answers, certificates, GET /ledger/head or "
            "/ledger/checkpoints pages"))],
        public_key: Annotated[Path | None, typer.Option("--public-key", exists=True, dir_okay=False, help=(
            "the server's Ed25519 public key (PEM) as you obtained it; default: ask the server"))] = None,
        entries: Annotated[Path | None, typer.Option("--entries", exists=True, dir_okay=False, help=(
            "an exported ledger (GET /ledger pages) to check offline instead of asking the server"))] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
        url: str = URL, key: str | None = KEY) -> None:
    """Check the chain against kept checkpoints: a fork or truncation is reported with the first differing
    entry (exit 8)."""
    from app.ledger import audit

    kept = _load_json(against)
    if entries is not None:  # offline: nothing asked of the server
        rows = audit_entries(_load_json(entries))
        tenants = {c.get("tenant_id") for c in audit.collect(kept)[0]} - {None}
        if len(tenants) != 1 or public_key is None:
            raise typer.BadParameter("offline checks (--entries) need --public-key and checkpoints of one tenant")
        tenant_id, pem = tenants.pop(), public_key.read_text()
    else:
        with output.client(url, key) as lethe:
            tenant_id = lethe.head()["tenant_id"]
            rows = list(lethe.ledger())
            pem = public_key.read_text() if public_key else lethe.public_key()
    report = audit.check(entries=rows, tenant_id=tenant_id, kept=kept, public_key_pem=pem)
    emit(report) if as_json else _print_report(tenant_id, report)
    if not report["ok"]:
        raise typer.Exit(say_error(LEDGER_BROKEN, "the ledger does not verify against what you kept"))


def _print_report(tenant_id: str, report: dict[str, Any]) -> None:
    console.print(f"chain of tenant {tenant_id}: {report['entries']} entries, checked against "
                  f"{report['checkpoints_checked']} signed checkpoint(s), {report['entries_checked']} "
                  f"kept entry hash(es) and {report['certificates_checked']} certificate(s)")
    if not report["chain"]["ok"]:
        console.print(f"[red]chain broken[/red] at seq {report['chain']['broken_at']}: {report['chain']['reason']}")
    for bad in report["bad_signatures"]:
        console.print(f"[red]bad signature[/red]: kept checkpoint seq {bad['seq']} is not signed by this key")
    for request_id in report["bad_certificates"]:
        console.print(f"[red]bad signature[/red]: the certificate of request {request_id} was altered or not "
                      "signed by this key")
    if report["problem"]:
        p = report["problem"]
        console.print(f"[red]{p['kind'].upper()}[/red]: {p['detail']}")
    if report["ok"]:
        console.print("[green]ok[/green]: the chain reaches every head you kept")


def audit_entries(document: Any) -> list[dict[str, Any]]:
    """Full entries (as GET /ledger shows them) from an export: one page, a list of pages, or a list."""
    found: list[dict[str, Any]] = []
    for node in document if isinstance(document, list) else [document]:
        if isinstance(node, dict) and "items" in node:
            found.extend(node["items"])
        elif isinstance(node, dict) and "prev_hash" in node:
            found.append(node)
    return sorted(found, key=lambda e: e["seq"])
