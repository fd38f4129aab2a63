"""The `lethe` command: serve, worker, migrate, demo, forget, job, status, keys, ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

if TYPE_CHECKING:
    from app.client import Lethe
    from app.jobs.schemas import JobRead

# Exit codes: scripts branch on these (documented in `lethe --help` and the README).
OK, UNEXPECTED, USAGE, NOT_FOUND, REFUSED, JOB_FAILED, AUDIT_FAILED, UNREACHABLE, LEDGER_BROKEN = range(9)
EXIT_CODES = (
    "Exit codes: 0 done; 1 unexpected error; 2 usage or invalid input (the server's 400, 413, 422); "
    "3 not found (404, 410; forget: a subject the dataset holds no data for); "
    "4 refused (401 bad key, 403 scope, 409 conflict, 429 rate limit); "
    "5 the job or request failed or was cancelled (--wait); "
    "6 the audit failed or was inconclusive (--wait: the job failed on it, or the version was promoted without a "
    "pass, e.g. an inconclusive audit the policy accepts); "
    "7 server or database unreachable (connection refused, timeout, 5xx); "
    "8 the ledger does not verify (ledger verify, status). "
    "Errors are one line on stderr; --json puts machine-readable output on stdout."
)


KEEP_ALIVE_SECONDS = 75


def _code_for(status: int) -> int:
    if status in (404, 410):
        return NOT_FOUND
    if status in (401, 403, 409, 429):
        return REFUSED
    return UNREACHABLE if status >= 500 else USAGE


def _message(detail: Any) -> str:
    """One readable line from an error body of either shape: {"error", "detail"} (a string, an object with
    "message", or validation errors) or RFC 9457 problem details ("detail"/"title" and extension members)."""
    if isinstance(detail, str):
        text = detail.strip()
        if text[:1] in "{[":  # a JSON body the client did not parse (e.g. application/problem+json)
            try:
                return _message(json.loads(text))
            except json.JSONDecodeError:
                pass
        return text
    if isinstance(detail, list):  # validation errors: [{loc, msg, type}]
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}" if isinstance(e, dict)
            else str(e) for e in detail)
    if isinstance(detail, dict):
        if isinstance(detail.get("error"), dict):  # OpenDSR's {"error": {"code", "message", ...}}
            return _message(detail["error"].get("message"))
        main = next((detail[k] for k in ("detail", "message", "title") if detail.get(k)), None)
        if main is None and isinstance(detail.get("errors"), list):
            main = detail["errors"]
        text = _message(main) if main is not None else json.dumps(detail)
        for key, values in detail.items():  # named lists worth a glance: unknown_point_ids, choices, ...
            if isinstance(values, list) and values and key not in ("detail", "errors") and \
                    all(isinstance(v, str | int) for v in values):
                shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
                text += f" ({key.replace('_', ' ')}: {shown})"
        return text
    return "" if detail is None else str(detail)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _say_error(code: int, text: str) -> int:
    print(f"error: {_one_line(text)}", file=sys.stderr, flush=True)
    return code


def _error_code(exc: BaseException) -> int:
    """Print `exc` as one line on stderr; the exit code it means."""
    import httpx
    from sqlalchemy.exc import SQLAlchemyError

    from app.client import LetheAPIError
    from app.errors import LetheError

    if isinstance(exc, LetheAPIError):
        message = getattr(exc, "message", None)
        return _say_error(_code_for(exc.status), f"{exc.status} "
                          f"{message if isinstance(message, str) and message else _message(exc.detail)}")
    if isinstance(exc, httpx.TransportError):
        where = getattr(getattr(exc, "request", None), "url", None) if _has_request(exc) else None
        return _say_error(UNREACHABLE, f"cannot reach the Lethe server{f' at {where}' if where else ''}: "
                          f"{exc or type(exc).__name__} (is `lethe serve` running? --url or LETHE_URL)")
    if isinstance(exc, LetheError):
        return _say_error(_code_for(exc.status_code), _message(exc.detail))
    if isinstance(exc, SQLAlchemyError):
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return _say_error(UNREACHABLE, f"database: {first} (is it reachable and migrated: `lethe migrate`?)")
    if type(exc).__name__ == "NoArgsIsHelpError":  # `lethe keys`: the help was already printed
        return USAGE
    if _is_click_error(exc):  # usage errors (exit 2) and typer.BadParameter: click's, vendored by typer
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return _say_error(int(getattr(exc, "exit_code", USAGE)), exc.format_message() + hint)  # type: ignore[attr-defined]
    if isinstance(exc, typer.Abort):
        return _say_error(UNEXPECTED, "aborted")
    return _say_error(UNEXPECTED, f"{type(exc).__name__}: {exc} (LETHE_DEBUG=1 shows the traceback)")


def _is_click_error(exc: BaseException) -> bool:
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def _has_request(exc: BaseException) -> bool:
    try:
        return getattr(exc, "request", None) is not None  # httpx raises RuntimeError when it has none
    except RuntimeError:
        return False


class _Lethe(TyperGroup):
    """Every failure, at any depth (`lethe keys create`, ...), ends as one line on stderr and an exit code:
    no tracebacks (LETHE_DEBUG=1 lets unexpected ones through)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
            code = rv if isinstance(rv, int) else OK  # typer answers an Exit in non-standalone mode with its code
        except Exception as exc:  # noqa: BLE001  (click's own exceptions included: usage errors, Abort)
            if os.environ.get("LETHE_DEBUG") and not _is_click_error(exc):
                raise
            code = _error_code(exc)
        if standalone_mode:
            sys.exit(code)
        return code


cli = typer.Typer(cls=_Lethe, help="Lethe: remove training data from deployed PyTorch models.", epilog=EXIT_CODES,
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

URL = typer.Option(os.environ.get("LETHE_URL", "http://127.0.0.1:8000"), "--url", help="Lethe server")
KEY = typer.Option(os.environ.get("LETHE_API_KEY"), "--key", help="API key (default: LETHE_API_KEY or the demo key)")
JSON = typer.Option("--json", help="machine-readable output on stdout (JSON)")


def _emit(value: Any) -> None:
    """--json output: one JSON document on stdout, nothing else there."""
    print(json.dumps(value, indent=2, default=str), flush=True)


def _key(key: str | None) -> str:
    if key:
        return key
    from app.demo import admin_key

    return admin_key()


@cli.command()
def migrate(as_json: Annotated[bool, JSON] = False) -> None:
    """Bring the database to the newest schema."""
    from app import migrate as m
    from app.settings import get_settings

    m.upgrade()
    where = get_settings().sqlalchemy_url.split("@")[-1]
    _emit({"database": where, "at_head": True}) if as_json else console.print(f"database at head: {where}")


@cli.command()
def demo(as_json: Annotated[bool, JSON] = False,
         dataset: Annotated[str, typer.Option(help="digits (scikit-learn's, an .npz and an mlp) or fashion-mnist "
                                                   "(Debian's dataset-fashion-mnist as Parquet PNGs, a cnn)")
                            ] = "digits",
         size: Annotated[int | None, typer.Option(help="fashion-mnist: train images (default 1000; a quarter as "
                                                       "many test images)", min=10)] = None) -> None:
    """Register a demo dataset and its model, train and score it (idempotent)."""
    from app.demo import DEMOS, run_demo
    from workers.engine.fashion_mnist import FashionMNISTMissing

    if dataset not in DEMOS:
        raise typer.BadParameter(f"--dataset must be one of {', '.join(DEMOS)}")
    try:
        result = run_demo(dataset=dataset, size=size, echo=(lambda *_: None) if as_json else console.print)
    except FashionMNISTMissing as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        _emit({k: v for k, v in result.items()})
    else:
        console.print(f"admin API key: [bold]{result['key']}[/bold]")


@cli.command()
def worker(concurrency: Annotated[int, typer.Option(help="processes (1 per GPU is usual)")] = 1,
           loglevel: str = "INFO",
           quiet: Annotated[bool, typer.Option(help="no start-up banner, no running-as-root warning")] = False,
           ) -> None:
    """Run a Celery worker for unlearning, scoring and training jobs."""
    from workers.celery_app import celery

    pool = "solo" if concurrency == 1 else "prefork"
    if quiet:
        import warnings

        from celery.exceptions import SecurityWarning

        # Containers and CI run as root; the warning is for pickle, which Lethe's JSON-only workers never accept.
        warnings.filterwarnings("ignore", category=SecurityWarning)
    celery.worker_main([*(["--quiet"] if quiet else []), "worker", f"--pool={pool}", f"--concurrency={concurrency}",
                        "-Q", "lethe", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])


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
          workers: Annotated[int, typer.Option(help="uvicorn processes")] = 1,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
              "the embedded worker logs at INFO with Celery's banner (default: warnings only, no banner; "
              "also LETHE_VERBOSE=1)"))] = False) -> None:
    """Serve the API (and, by default, one worker process and the outbox relay)."""
    import uvicorn

    from app import migrate as m
    from app.background import Background
    from app.settings import get_settings

    m.upgrade()
    child = None
    if not no_worker:
        loud = verbose or get_settings().verbose
        child = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--loglevel",
                                  "INFO" if loud else "WARNING", *([] if loud else ["--quiet"])],
                                 preexec_fn=_die_with_parent)
    relay = Background(get_settings().relay_interval)
    relay.start()
    from app.demo import admin_key

    key = admin_key()
    console.print(f"Lethe on http://{host}:{port}  (docs: /docs)   admin API key: [bold]{key}[/bold]\n"
                  f"try: curl -s -H 'Authorization: Bearer {key}' http://{host}:{port}/models/digits")
    try:
        # Keep idle connections longer than clients and proxies do (httpx 5 s, nginx 75 s): with uvicorn's 5 s
        # default a client reusing a connection just as the server closes it gets a ReadError mid-request.
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning",
                    timeout_keep_alive=KEEP_ALIVE_SECONDS)
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


def _split(values: list[str]) -> list[str]:
    return [p for item in values for p in item.split(",") if p]


@cli.command()
def forget(model: str, points: Annotated[list[str], typer.Option("--points", "-p", help="point ids")] = [],  # noqa: B006
           subjects: Annotated[list[str], typer.Option("--subjects", "-s", help="subject ids")] = [],  # noqa: B006
           reason: str = "erasure request", requested_by: str = "cli",
           wait: Annotated[bool, typer.Option(help="follow the job; exit 0 only if the request completed")] = False,
           algorithm: Annotated[str | None, typer.Option(help="override the model's unlearning algorithm")] = None,
           as_json: Annotated[bool, JSON] = False, url: str = URL, key: str | None = KEY) -> None:
    """POST /forget: prints the request id, job id, free/pending counts and any subject with no data held
    (exit 3 then, the request still recorded); with --wait, follows the job (exit 5 or 6 unless it completed)."""
    ids, subject_ids = _split(points), _split(subjects)
    if not ids and not subject_ids:
        raise typer.BadParameter("give --points or --subjects (ids, comma-separated or repeated)")
    with _client(url, key) as lethe:
        answer = lethe.forget(model, point_ids=ids, subject_ids=subject_ids, reason=reason,
                              requested_by=requested_by, algorithm=algorithm)
        # As given (the caller's own answer); the server keeps only keyed hashes of them.
        unknown = answer.unknown_subject_ids or answer.unknown_subjects
        if not as_json:
            console.print(f"request {answer.request_id} ({answer.status}) on {answer.ref}: {len(answer.free)} free "
                          f"({answer.free_basis}), {len(answer.pending)} pending, {len(answer.already_forgotten)} "
                          f"already forgotten; job {answer.job_id or 'none (nothing needs unlearning)'}")
            for subject in unknown:
                console.print(f"no data held for subject {subject!r}")
        job, status = None, answer.status
        if wait and answer.job_id:
            job = _follow(lethe, answer.job_id, quiet=as_json)
            status = lethe.request(answer.request_id).status
    if as_json:
        _emit(answer.model_dump(mode="json") | {"request_status": status,
                                                "job": job.model_dump(mode="json") if job else None})
    code = _outcome(job, status) if wait else OK
    if code != OK:
        why = job.error if job is not None and job.error else _unverified(job)
        raise typer.Exit(_say_error(code, f"request {answer.request_id} {status}" + (f": {why}" if why else "")))
    if unknown:
        raise typer.Exit(_say_error(NOT_FOUND, f"no data held for {len(unknown)} subject(s): "
                                    + ", ".join(unknown)))


def _unverified(job: JobRead | None) -> str | None:
    """Why a completed job's promoted version is not backed by a passed audit (None when it is): an inconclusive
    audit the policy accepted, or a retrain the audit flagged. A retrain whose audit is only inconclusive (the pool
    could not measure) is exact by construction and counts as verified."""
    audit = ((job.result or {}).get("audit") or {}) if job is not None else {}
    verdict = audit.get("verdict")
    if verdict in (None, "passed"):
        return None
    if verdict == "inconclusive" and (audit.get("evidence") or {}).get("promoted_as_retrain"):
        return None
    return f"audit {verdict}: " + "; ".join(audit.get("reasons") or []) if audit.get("reasons") else f"audit {verdict}"


def _outcome(job: JobRead | None, request_status: str) -> int:
    """The exit code of a followed request: 0 completed with a passed audit (or an exact retrain), 6 its audit
    failed or was inconclusive (job failed on it, or the version promoted without a pass), else 5."""
    if request_status == "completed":
        return AUDIT_FAILED if _unverified(job) else OK
    verdict = ((job.result or {}).get("audit") or {}).get("verdict") if job is not None else None
    failed_audit = job is not None and job.status == "failed" and (
        verdict in ("failed", "inconclusive") or (job.error or "").startswith("audit failed"))
    return AUDIT_FAILED if failed_audit else JOB_FAILED


def _follow(lethe: Lethe, job_id: str, *, quiet: bool = False) -> JobRead:
    """Poll a job until it ends, with a progress bar on a terminal's stderr; print its outcome line."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
        task = bar.add_task("queued", total=1.0)
        job = lethe.wait(job_id, on_progress=lambda j: bar.update(
            task, completed=j.progress, description=f"{j.status} {j.phase or ''}"))
    if not quiet:
        result = job.result or {}
        colour = "green" if job.status == "completed" else "red"
        verdict = (result.get("audit") or {}).get("verdict")
        console.print(f"[{colour}]job {job.status}[/{colour}] {result.get('ref') or ''} {job.error or ''}"
                      + (f" (audit {verdict}, {result.get('algorithm')})" if verdict else ""), markup=True,
                      highlight=False)
    return job


@cli.command()
def job(job_id: str, url: str = URL, key: str | None = KEY,
        wait: Annotated[bool, typer.Option(help="follow until it ends; exit 5 or 6 unless it completed")] = False,
        as_json: Annotated[bool, JSON] = False) -> None:
    """Show a job (JSON)."""
    with _client(url, key) as lethe:
        found = _follow(lethe, job_id, quiet=as_json) if wait else lethe.job(job_id)
    if as_json:
        _emit(found.model_dump(mode="json"))
    else:
        console.print_json(found.model_dump_json())
    if wait and _outcome(found, found.status) != OK:
        why = found.error or _unverified(found)
        raise typer.Exit(_say_error(_outcome(found, found.status), f"job {found.id} {found.status}"
                                    + (f": {why}" if why else "")))


@cli.command()
def status(url: str = URL, key: str | None = KEY, as_json: Annotated[bool, JSON] = False) -> None:
    """Models and their current versions, the queue, what unlearning has cost, and the ledger (exit 8 if it
    does not verify)."""
    from rich.table import Table

    with _client(url, key) as lethe:
        st = lethe.status()
    if as_json:
        _emit(st)
    else:
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
    if not st["ledger_ok"]:
        raise typer.Exit(_say_error(LEDGER_BROKEN, "the ledger does not verify (GET /ledger/verify)"))


keys = typer.Typer(help="API keys in the configured database (operator commands; keys are stored hashed).",
                   no_args_is_help=True)
cli.add_typer(keys, name="keys")


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
        _emit(document)
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
    _emit(rows) if as_json else console.print(table)


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
    _emit(document) if as_json else console.print(info)


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
        with _client(url, key) as lethe:
            tenant_id = lethe.head()["tenant_id"]
            rows = list(lethe.ledger())
            pem = public_key.read_text() if public_key else lethe.public_key()
    report = audit.check(entries=rows, tenant_id=tenant_id, kept=kept, public_key_pem=pem)
    if as_json:
        _emit(report)
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
    if not report["ok"]:
        raise typer.Exit(_say_error(LEDGER_BROKEN, "the ledger does not verify against what you kept"))


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
    typer.main.get_command(cli).main(prog_name="lethe")


if __name__ == "__main__":
    main()
