"""Commands that talk to a running server over HTTP: forget, job, status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli import output
from app.cli.output import (
    AUDIT_FAILED,
    JOB_FAILED,
    JSON,
    KEY,
    LEDGER_BROKEN,
    NOT_FOUND,
    OK,
    URL,
    console,
    emit,
    err,
    say_error,
)
from app.forget.enums import RequestStatus
from app.jobs.enums import JobStatus, Verdict

if TYPE_CHECKING:
    from app.client import Lethe
    from app.jobs.schemas import JobRead


def _split(values: list[str]) -> list[str]:
    return [p for item in values for p in item.split(",") if p]


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
    with output.client(url, key) as lethe:
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
            job = follow(lethe, answer.job_id, quiet=as_json)
            status = lethe.request(answer.request_id).status
    if as_json:
        emit(answer.model_dump(mode="json") | {"request_status": status,
                                               "job": job.model_dump(mode="json") if job else None})
    code = outcome(job, status) if wait else OK
    if code != OK:
        why = job.error if job is not None and job.error else unverified(job)
        raise typer.Exit(say_error(code, f"request {answer.request_id} {status}" + (f": {why}" if why else "")))
    if unknown:
        raise typer.Exit(say_error(NOT_FOUND, f"no data held for {len(unknown)} subject(s): " + ", ".join(unknown)))


def unverified(job: JobRead | None) -> str | None:
    """Why a completed job's promoted version is not backed by a passed audit (None when it is): an inconclusive
    audit the policy accepted, or a retrain the audit flagged. A retrain whose audit is only inconclusive (the pool
    could not measure) is exact by construction and counts as verified."""
    audit = ((job.result or {}).get("audit") or {}) if job is not None else {}
    verdict = audit.get("verdict")
    if verdict in (None, Verdict.PASSED):
        return None
    if verdict == Verdict.INCONCLUSIVE and (audit.get("evidence") or {}).get("promoted_as_retrain"):
        return None
    return f"audit {verdict}: " + "; ".join(audit.get("reasons") or []) if audit.get("reasons") else f"audit {verdict}"


def outcome(job: JobRead | None, request_status: str) -> int:
    """The exit code of a followed request: 0 completed with a passed audit (or an exact retrain), 6 its audit
    failed or was inconclusive (job failed on it, or the version promoted without a pass), else 5."""
    if request_status == RequestStatus.COMPLETED:
        return AUDIT_FAILED if unverified(job) else OK
    verdict = ((job.result or {}).get("audit") or {}).get("verdict") if job is not None else None
    failed_audit = job is not None and job.status == JobStatus.FAILED and (
        verdict in (Verdict.FAILED, Verdict.INCONCLUSIVE) or (job.error or "").startswith("audit failed"))
    return AUDIT_FAILED if failed_audit else JOB_FAILED


def follow(lethe: Lethe, job_id: str, *, quiet: bool = False) -> JobRead:
    """Poll a job until it ends, with a progress bar on a terminal's stderr; print its outcome line."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
        task = bar.add_task("queued", total=1.0)
        job = lethe.wait(job_id, on_progress=lambda j: bar.update(
            task, completed=j.progress, description=f"{j.status} {j.phase or ''}"))
    if not quiet:
        result = job.result or {}
        colour = "green" if job.status == JobStatus.COMPLETED else "red"
        verdict = (result.get("audit") or {}).get("verdict")
        console.print(f"[{colour}]job {job.status}[/{colour}] {result.get('ref') or ''} {job.error or ''}"
                      + (f" (audit {verdict}, {result.get('algorithm')})" if verdict else ""), markup=True,
                      highlight=False)
    return job


def job(job_id: str, url: str = URL, key: str | None = KEY,
        wait: Annotated[bool, typer.Option(help="follow until it ends; exit 5 or 6 unless it completed")] = False,
        as_json: Annotated[bool, JSON] = False) -> None:
    """Show a job (JSON)."""
    with output.client(url, key) as lethe:
        found = follow(lethe, job_id, quiet=as_json) if wait else lethe.job(job_id)
    if as_json:
        emit(found.model_dump(mode="json"))
    else:
        console.print_json(found.model_dump_json())
    if wait and outcome(found, found.status) != OK:
        why = found.error or unverified(found)
        raise typer.Exit(say_error(outcome(found, found.status), f"job {found.id} {found.status}"
                                   + (f": {why}" if why else "")))


def status(url: str = URL, key: str | None = KEY, as_json: Annotated[bool, JSON] = False) -> None:
    """Models and their current versions, the queue, what unlearning has cost, and the ledger (exit 8 if it
    does not verify)."""
    from rich.table import Table

    with output.client(url, key) as lethe:
        st = lethe.status()
    if as_json:
        emit(st)
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
        raise typer.Exit(say_error(LEDGER_BROKEN, "the ledger does not verify (GET /ledger/verify)"))
