"""The CLI against the real app: every error is one line on stderr with its documented exit code, never a
traceback; forget names its request, job and subjects with no data; --wait and --json mean what they say."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app import cli
from app.cli import output, remote
from app.client import Lethe
from app.main import create_app
from tests.conftest import BOOTSTRAP
from tests.factories import create_model, drain, upload_dataset, upload_version
from tests.support import free_port


@pytest.fixture
def toy(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app with dataset and model `toy` (uploaded weights), and the CLI's client pointed at it."""
    with TestClient(create_app()) as client:
        h = {"Authorization": f"Bearer {BOOTSTRAP}"}
        upload_dataset(client, h)
        create_model(client, h)
        assert upload_version(client, h).status_code == 201

        def over(url: str, key: str | None) -> Lethe:  # the key the command was given, or the bootstrap key
            client.headers["Authorization"] = f"Bearer {key or BOOTSTRAP}"
            return Lethe.over(client)

        monkeypatch.setattr(output, "client", over)
        monkeypatch.setattr(client, "close", lambda: None)  # the CLI closes its client; the test keeps it
        yield client


def run(*args: str) -> Any:
    return CliRunner().invoke(cli.cli, list(args), env={"COLUMNS": "250"})


def one_error_line(result: Any) -> str:
    """The command's stderr: exactly one line, `error: ...`, and no traceback anywhere."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception,
                                                                                       SystemExit)
    return lines[0]


def test_errors_are_one_line_with_their_exit_code(toy: TestClient) -> None:
    bad_key = run("status", "--key", "lethe_wrong")
    assert bad_key.exit_code == output.REFUSED and "401" in one_error_line(bad_key)
    missing_job = run("job", "nope")
    assert missing_job.exit_code == output.NOT_FOUND and "no job nope" in one_error_line(missing_job).lower()
    no_model = run("forget", "digit", "-p", "p0001")
    assert no_model.exit_code == output.NOT_FOUND and "digit" in one_error_line(no_model)
    unknown_point = run("forget", "toy", "-p", "p0001,nothere")
    line = one_error_line(unknown_point)
    assert unknown_point.exit_code == output.USAGE and "422" in line and "nothere" in line
    assert upload_version(toy, {"Authorization": f"Bearer {BOOTSTRAP}"}).status_code == 201  # toy@2 current
    stale = run("forget", "toy@1", "-p", "p0001")
    assert stale.exit_code == output.REFUSED and "409" in one_error_line(stale)
    algorithm = run("forget", "toy", "-p", "p0001", "--algorithm", "negrad")
    assert algorithm.exit_code == output.USAGE and "negrad" in one_error_line(algorithm)
    nothing = run("forget", "toy")
    assert nothing.exit_code == output.USAGE and "--points or --subjects" in one_error_line(nothing)
    usage = run("job")
    assert usage.exit_code == output.USAGE and "job_id" in one_error_line(usage).lower()
    assert run("nope").exit_code == output.USAGE
    # nothing was recorded by the refused requests
    assert toy.get("/requests", headers={"Authorization": f"Bearer {BOOTSTRAP}"}).json()["total"] == 0


def test_server_unreachable_is_exit_7_in_one_line() -> None:
    port = free_port()  # nothing listens there
    for args in (["status"], ["job", "x"], ["forget", "toy", "-p", "p1"]):
        out = subprocess.run([sys.executable, "-m", "app.cli", *args, "--url", f"http://127.0.0.1:{port}",
                              "--key", "k"], capture_output=True, text=True, timeout=120)
        assert out.returncode == output.UNREACHABLE, out.stderr
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: cannot reach the Lethe server"), \
            out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""


def test_forget_prints_ids_counts_and_subjects_without_data(toy: TestClient) -> None:
    out = run("forget", "toy", "-p", "p0001", "-s", "s002,nobody-777")
    # the request is recorded and its job queued, but a subject without data is the caller's mistake: exit 3
    assert out.exit_code == output.NOT_FOUND, out.output
    request_id = out.stdout.split()[1]
    req = toy.get(f"/requests/{request_id}").json()
    assert req["job_id"] and f"job {req['job_id']}" in out.stdout
    assert "5 pending" in out.stdout and "0 free" in out.stdout  # p0001 and subject s002's four points
    assert "no data held for subject 'nobody-777'" in out.stdout
    assert "nobody-777" in one_error_line(out) and "no data held" in one_error_line(out)
    assert len(req["unknown_subjects"]) == 1 and req["unknown_subjects"][0] != "nobody-777"  # stored hashed


def test_forget_json_and_wait(toy: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    real_wait = Lethe.wait

    def wait_with_worker(self: Lethe, job_id: str, **kw: Any) -> Any:
        drain()  # what a worker would do meanwhile
        return real_wait(self, job_id, poll=0.01, **kw)

    monkeypatch.setattr(Lethe, "wait", wait_with_worker)
    # The tests run without reference pools and accept inconclusive audits (conftest's LEGACY): the request
    # completes on a version whose audit is inconclusive, unverified, so --wait says so with exit 6
    out = run("forget", "toy", "-p", "p0003,p0004", "--wait", "--json")
    assert out.exit_code == output.AUDIT_FAILED, out.output
    doc = json.loads(out.stdout)  # stdout holds the JSON document and nothing else
    assert doc["request_status"] == "completed" and doc["job"]["status"] == "completed"
    assert doc["job"]["result"]["audit"]["verdict"] == "inconclusive"
    assert doc["job_id"] == doc["job"]["id"] and sorted(doc["pending"]) == ["p0003", "p0004"]
    assert "completed: audit inconclusive" in one_error_line(out)
    job = run("job", doc["job_id"], "--json")
    assert job.exit_code == 0 and json.loads(job.stdout)["result"]["ref"] == "toy@2"
    assert run("job", doc["job_id"], "--wait").exit_code == output.AUDIT_FAILED
    status = run("status", "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["ledger_ok"] is True

    # a job that fails: --wait exits 5 (not an audit failure), with the job's error on one line
    import workers.engine.api as engine

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the unlearning run crashed")

    monkeypatch.setattr(engine, "unlearn", broken)
    failed = run("forget", "toy", "-p", "p0005", "--wait")
    assert failed.exit_code == output.JOB_FAILED, failed.output
    line = one_error_line(failed)
    assert "failed" in line and "the unlearning run crashed" in line
    assert "job failed" in failed.stdout
    job_id = toy.get("/jobs?status=failed").json()["items"][0]["id"]
    again = run("job", job_id, "--wait")
    assert again.exit_code == output.JOB_FAILED and "crashed" in one_error_line(again)

    # every attempt of the ladder returns an untrained network: the real audit fails each on accuracy; the ladder's
    # retrain is promoted (exact by construction) but its failed audit is said, with exit 6
    def untrained(algorithm: str, net: Any, **kw: Any) -> Any:
        return engine._build(kw["arch"], kw["shape"], kw["n_classes"], seed=7), {}

    monkeypatch.setattr(engine, "unlearn", untrained)
    audited = run("forget", "toy", "-p", "p0006", "--wait", "--json")
    assert audited.exit_code == output.AUDIT_FAILED, audited.output
    audit = json.loads(audited.stdout)["job"]["result"]["audit"]
    assert audit["verdict"] == "failed" and audit["evidence"]["promoted_as_retrain"] is True, audit
    assert "completed: audit failed: retain accuracy fell" in one_error_line(audited)


def test_exit_code_of_a_job_failed_on_its_audit() -> None:
    from datetime import UTC, datetime

    from app.jobs.schemas import JobRead

    def job(status: str, verdict: str | None, error: str | None, retrain: bool = False) -> JobRead:
        audit = {"verdict": verdict, "evidence": {"promoted_as_retrain": retrain}}
        return JobRead(id="j", kind="unlearn", status=status, phase=None, progress=1.0, model="toy", version=1,
                       requests=[], params={}, timings={}, result={"audit": audit}, error=error,
                       attempts=1,
                       created_at=datetime.now(UTC), started_at=None, finished_at=None)

    assert remote.outcome(job("completed", "passed", None), "completed") == output.OK
    assert remote.outcome(job("completed", "inconclusive", None, retrain=True), "completed") == output.OK  # exact
    assert remote.outcome(job("completed", "inconclusive", None), "completed") == output.AUDIT_FAILED  # accepted
    assert remote.outcome(job("completed", "failed", None, retrain=True), "completed") == output.AUDIT_FAILED
    assert remote.outcome(job("failed", "failed", "audit failed: remembers"), "failed") == output.AUDIT_FAILED
    assert remote.outcome(job("failed", "inconclusive", "audit failed: power"), "failed") == output.AUDIT_FAILED
    assert remote.outcome(job("failed", None, "RuntimeError: boom"), "failed") == output.JOB_FAILED
    assert remote.outcome(job("cancelled", None, None), "cancelled") == output.JOB_FAILED


def test_error_messages_of_either_body_shape() -> None:
    """The CLI reads the client's LetheAPIError whatever the server's error shape."""
    assert output.message("no model 'digit'") == "no model 'digit'"
    legacy = {"message": "1 point id(s) are not in this model's dataset", "unknown_point_ids": ["x"]}
    assert output.message(legacy) == "1 point id(s) are not in this model's dataset (unknown point ids: x)"
    problem = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no model 'digit'",
               "choices": ["digits"]}
    assert output.message(problem) == "no model 'digit' (choices: digits)"
    assert output.message(json.dumps(problem)) == "no model 'digit' (choices: digits)"  # an unparsed problem+json
    validation = [{"loc": ["body", "reason"], "msg": "Field required", "type": "missing"}]
    assert output.message(validation) == "reason: Field required"


def test_keys_errors_and_json(lethe_env: dict[str, str]) -> None:
    created = run("keys", "create", "--tenant", "acme", "--scopes", "read,forget", "--json")
    assert created.exit_code == 0, created.output
    doc = json.loads(created.stdout)
    assert doc["tenant"] == "acme" and doc["key"].startswith("lethe_") and sorted(doc["scopes"]) == ["forget", "read"]
    listed = json.loads(run("keys", "list", "--tenant", "acme", "--json").stdout)
    assert [k["id"] for k in listed] == [doc["id"]] and "key" not in listed[0]
    bad_scope = run("keys", "create", "--scopes", "root")
    assert bad_scope.exit_code == output.USAGE and "scopes" in one_error_line(bad_scope)
    missing = run("keys", "revoke", "nope")
    assert missing.exit_code == output.NOT_FOUND and "no API key nope" in one_error_line(missing)
    revoked = run("keys", "revoke", doc["id"], "--json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked_at"].endswith("Z")


def _worker_output(tmp_path: Path, *flags: str) -> str:
    """What `lethe worker` prints in its first seconds (then SIGTERM)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")} | {
        "LETHE_DATA_DIR": str(tmp_path / "var"), "LETHE_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", *flags], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=12)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    return out


def test_the_worker_serve_starts_is_quiet(tmp_path: Path) -> None:
    """`lethe serve` starts `lethe worker --quiet --loglevel WARNING` unless --verbose / LETHE_VERBOSE: no Celery
    banner, no running-as-root warning."""
    loud = _worker_output(tmp_path, "--loglevel", "INFO")
    assert "[config]" in loud and "[queues]" in loud  # the banner, as celery prints it (the test can fail)
    if os.geteuid() == 0:
        assert "superuser privileges" in loud
    quiet = _worker_output(tmp_path, "--loglevel", "WARNING", "--quiet")
    assert "[config]" not in quiet and "superuser" not in quiet and "Traceback" not in quiet, quiet
