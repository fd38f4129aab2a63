"""The `lethe` command: serve, worker, migrate, demo, forget, job, status, keys, ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from app.client import Lethe

cli = typer.Typer(help="Lethe: remove training data from deployed PyTorch models.", no_args_is_help=True)
console = Console(soft_wrap=True)

URL = typer.Option(os.environ.get("LETHE_URL", "http://127.0.0.1:8000"), "--url", help="Lethe server")
KEY = typer.Option(os.environ.get("LETHE_API_KEY"), "--key", help="API key (default: LETHE_API_KEY or the demo key)")


def _key(key: str | None) -> str:
    if key:
        return key
    from app.demo import admin_key

    return admin_key()


@cli.command()
def migrate() -> None:
    """Bring the database to the newest schema."""
    from app import migrate as m
    from app.settings import get_settings

    m.upgrade()
    console.print(f"database at head: {get_settings().sqlalchemy_url.split('@')[-1]}")


@cli.command()
def demo() -> None:
    """Register scikit-learn digits and model `digits`, train and score it (idempotent)."""
    from app.demo import run_demo

    result = run_demo(echo=console.print)
    console.print(f"admin API key: [bold]{result['key']}[/bold]")


@cli.command()
def worker(concurrency: Annotated[int, typer.Option(help="processes (1 per GPU is usual)")] = 1,
           loglevel: str = "INFO") -> None:
    """Run a Celery worker for unlearning, scoring and training jobs."""
    from workers.celery_app import celery

    pool = "solo" if concurrency == 1 else "prefork"
    celery.worker_main(["worker", f"--pool={pool}", f"--concurrency={concurrency}", "-Q", "lethe",
                        f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when `lethe serve` dies, however it dies (uvicorn re-raises signals)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          no_worker: Annotated[bool, typer.Option("--no-worker", help="do not start a worker beside the API")] = False,
          workers: Annotated[int, typer.Option(help="uvicorn processes")] = 1) -> None:
    """Serve the API (and, by default, one worker process and the outbox relay)."""
    import uvicorn

    from app import migrate as m
    from app.jobs.outbox import Relay
    from app.settings import get_settings

    m.upgrade()
    child = None
    if not no_worker:
        child = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--loglevel", "WARNING"],
                                 preexec_fn=_die_with_parent)
    relay = Relay(get_settings().relay_interval)
    relay.start()
    from app.demo import admin_key

    key = admin_key()
    console.print(f"Lethe on http://{host}:{port}  (docs: /docs)   admin API key: [bold]{key}[/bold]\n"
                  f"try: curl -s -H 'Authorization: Bearer {key}' http://{host}:{port}/models/digits")
    try:
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")
    finally:
        relay.stop()
        if child is not None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


def _client(url: str, key: str | None) -> Lethe:
    from app.client import Lethe

    return Lethe(url, _key(key))


@cli.command()
def forget(model: str, points: Annotated[list[str], typer.Option("--points", "-p", help="point ids")] = [],  # noqa: B006
           subjects: Annotated[list[str], typer.Option("--subjects", "-s", help="subject ids")] = [],  # noqa: B006
           reason: str = "erasure request", requested_by: str = "cli", wait: bool = False,
           algorithm: Annotated[str | None, typer.Option(help="override the model's unlearning algorithm")] = None,
           url: str = URL, key: str | None = KEY) -> None:
    """POST /forget; with --wait, follow the job with a progress bar."""
    from app.client import LetheAPIError

    ids = [p for item in points for p in item.split(",") if p]
    subject_ids = [p for item in subjects for p in item.split(",") if p]
    with _client(url, key) as lethe:
        try:
            answer = lethe.forget(model, point_ids=ids, subject_ids=subject_ids, reason=reason,
                                  requested_by=requested_by, algorithm=algorithm)
        except LetheAPIError as exc:
            console.print(f"[red]{exc.status}[/red] {exc.detail}")
            raise typer.Exit(1) from exc
        console.print(f"request {answer.request_id}: {len(answer.free)} free ({answer.free_basis}), "
                      f"{len(answer.pending)} pending, {len(answer.already_forgotten)} already forgotten")
        if wait and answer.job_id:
            _follow(lethe, answer.job_id)


def _follow(lethe: Lethe, job_id: str) -> None:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("queued", total=1.0)
        job = lethe.wait(job_id, on_progress=lambda j: bar.update(
            task, completed=j.progress, description=f"{j.status} {j.phase or ''}"))
    result = job.result or {}
    colour = "green" if job.status == "completed" else "red"
    verdict = (result.get("audit") or {}).get("verdict")
    console.print(f"[{colour}]job {job.status}[/{colour}] {result.get('ref') or ''} {job.error or ''}"
                  + (f" (audit {verdict}, {result.get('algorithm')})" if verdict else ""))


@cli.command()
def job(job_id: str, url: str = URL, key: str | None = KEY,
        wait: Annotated[bool, typer.Option(help="follow until it ends")] = False) -> None:
    """Show a job."""
    with _client(url, key) as lethe:
        if wait:
            _follow(lethe, job_id)
        console.print_json(lethe.job(job_id).model_dump_json())


@cli.command()
def status(url: str = URL, key: str | None = KEY) -> None:
    """Models and their current versions, the queue, what unlearning has cost, and the ledger."""
    from rich.table import Table

    with _client(url, key) as lethe:
        st = lethe.status()
    table = Table(title="models")
    for col in ("model", "current"):
        table.add_column(col)
    for m in st["models"]:
        table.add_row(m["name"], m["ref"] or "-")
    console.print(table)
    console.print(f"queue: {st['queue']['queued']} queued, {st['queue']['running']} running")
    for r in st["running"]:
        console.print(f"  {r['job_id']} {r['kind']} {r['phase'] or ''} {r['progress']:.0%}")
    mean = st["unlearning_seconds_mean"]
    console.print(f"unlearning jobs: {st['unlearning_jobs']} completed, {st['unlearning_seconds_total']:.1f} s "
                  f"in all" + (f", {mean:.1f} s each on average" if mean is not None else ""))
    console.print(f"ledger: {'[green]verified[/green]' if st['ledger_ok'] else '[red]BROKEN[/red]'}")


keys = typer.Typer(help="API keys in the configured database (operator commands; keys are stored hashed).",
                   no_args_is_help=True)
cli.add_typer(keys, name="keys")


def _fail(exc: Exception) -> typer.Exit:
    from app.errors import LetheError

    if isinstance(exc, LetheError):
        detail = exc.detail
    else:
        detail = f"{type(exc).__name__}: {exc} (is the database reachable and migrated: `lethe migrate`?)"
    console.print(f"[red]error:[/red] {detail}")
    return typer.Exit(1)


@keys.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="tenant name; created if new")] = "default",
                scopes: Annotated[str, typer.Option(help="read,forget,models,admin,operator")] = "read",
                name: Annotated[str | None, typer.Option(help="a label for the key")] = None) -> None:
    """Create a key; the key itself is printed once, alone on the last line."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import session_scope
    from app.errors import LetheError
    from app.tenants import service

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    try:
        with session_scope() as session:
            t = service.get_or_create_tenant(session, name=tenant)
            row, key = service.create_key(session, tenant_id=t.id, scopes=wanted, name=name)
            info = f"key {row.id} (prefix {row.prefix}) for tenant '{tenant}', scopes {','.join(row.scopes)}"
    except (LetheError, SQLAlchemyError) as exc:
        raise _fail(exc) from None
    console.print(info)
    print(key, flush=True)  # plain, last, on its own line: `lethe keys create ... | tail -n1`


@keys.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None) -> None:
    """List keys (id, tenant, prefix, scopes, created, revoked); never the keys themselves."""
    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import session_scope
    from app.tenants import service

    table = Table("id", "tenant", "prefix", "name", "scopes", "created", "revoked")
    try:
        with session_scope(readonly=True) as session:
            for row, tenant_name in service.all_keys(session, tenant=tenant):
                table.add_row(row.id, tenant_name, row.prefix, row.name or "", ",".join(row.scopes),
                              f"{row.created_at:%Y-%m-%d %H:%M}",
                              f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "")
    except SQLAlchemyError as exc:
        raise _fail(exc) from None
    console.print(table)


@keys.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (or its prefix)")]) -> None:
    """Revoke a key at once: later requests with it get 401."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import session_scope
    from app.errors import LetheError
    from app.tenants import service

    try:
        with session_scope() as session:
            row = service.revoke_any_key(session, key_id=key_id)
            info = f"revoked key {row.id} (prefix {row.prefix}) at {row.revoked_at:%Y-%m-%d %H:%M:%S}"
    except (LetheError, SQLAlchemyError) as exc:
        raise _fail(exc) from None
    console.print(info)


ledger = typer.Typer(help="The tamper-evident ledger: check it against what you kept.", no_args_is_help=True)
cli.add_typer(ledger, name="ledger")


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
    entry (exit 1)."""
    from app.ledger import audit

    kept = _load_json(against)
    if entries is not None:  # offline: nothing asked of the server
        rows = audit_entries(_load_json(entries))
        tenants = {c.get("tenant_id") for c in audit.collect(kept)[0]} - {None}
        if len(tenants) != 1 or public_key is None:
            console.print("[red]error:[/red] offline checks need --public-key and checkpoints of one tenant")
            raise typer.Exit(2)
        tenant_id, pem = tenants.pop(), public_key.read_text()
    else:
        with _client(url, key) as lethe:
            tenant_id = lethe.head()["tenant_id"]
            rows = list(lethe.ledger())
            pem = public_key.read_text() if public_key else lethe.public_key()
    report = audit.check(entries=rows, tenant_id=tenant_id, kept=kept, public_key_pem=pem)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        console.print(f"chain of tenant {tenant_id}: {report['entries']} entries, checked against "
                      f"{report['checkpoints_checked']} signed checkpoint(s), {report['entries_checked']} "
                      f"kept entry hash(es) and {report['certificates_checked']} certificate(s)")
        if not report["chain"]["ok"]:
            console.print(f"[red]chain broken[/red] at seq {report['chain']['broken_at']}: "
                          f"{report['chain']['reason']}")
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
    raise typer.Exit(0 if report["ok"] else 1)


def audit_entries(document: Any) -> list[dict[str, Any]]:
    """Full entries (as GET /ledger shows them) from an export: one page, a list of pages, or a list."""
    found: list[dict[str, Any]] = []
    for node in document if isinstance(document, list) else [document]:
        if isinstance(node, dict) and "items" in node:
            found.extend(node["items"])
        elif isinstance(node, dict) and "prev_hash" in node:
            found.append(node)
    return sorted(found, key=lambda e: e["seq"])


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
