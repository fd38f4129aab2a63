"""Worker faults: SIGKILL the `lethe worker` while a job is in each phase; a fresh worker finishes it, with
exactly one new version, a ledger that verifies and shows each event once, and each webhook event sent once.

To kill *inside* a phase without a test-only code path, the test holds a row lock (from its own Postgres
connection) that the worker needs next, so the worker waits in that phase until it is killed:
- scoring: the influence run's row, which the job writes only when its scores are stored;
- unlearning / auditing: the job's row (FOR NO KEY UPDATE: progress and phase writes wait, the audit's insert
  does not), killed mid-unlearning, and after the audit was recorded (the re-run must resume from it);
- registering: the model's row, which the final transaction updates when it promotes the new version.
The worker's lease is 3 s here, so the outbox relay republishes the orphaned job soon after the kill.
A last test freezes (SIGSTOP) a worker past its lease instead: another worker finishes the job, and the frozen
one, resumed, must drop its stale run rather than record an audit or register a second version.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from tests.conftest import BOOTSTRAP, _truncate
from tests.factories import npz_bytes
from tests.support import free_port, wait_until
from tests.system.faults import PrivateRedis, Server, Workers, subprocess_env, tail

pytestmark = pytest.mark.slow
H = {"Authorization": f"Bearer {BOOTSTRAP}"}
N, N_TEST, D, HIDDEN, N_FORGET = 2500, 300, 32, 128, 100  # sized so that each phase lasts a visible while
LEASE = 3


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint that records every event it receives."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.events.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def of(self, event_type: str, **data: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["type"] == event_type
                    and all(e["data"].get(k) == v for k, v in data.items())]


class Db:
    """The test's own view of the run's database: job rows, and row locks that hold a worker in a phase."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, pool_size=2)

    def one(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).one_or_none()

    def all(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def job(self, job_id: str) -> Any:
        return self.one("SELECT status, phase, attempts, timings FROM jobs WHERE id = :j", j=job_id)

    @contextlib.contextmanager
    def hold(self, *locks: tuple[str, dict[str, Any]]) -> Iterator[sa.Connection]:
        """Take these row locks in one transaction; release them (roll back) on exit."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SET lock_timeout = '20s'"))
            for sql, params in locks:
                conn.execute(sa.text(sql), params)
            try:
                yield conn
            finally:
                conn.rollback()

    def lock_waiters(self) -> int:
        return self.one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'")[0]


@dataclass
class Cluster:
    server: Server
    workers: Workers
    db: Db
    receiver: Receiver
    http: httpx.Client
    worker: Any = None

    def kill_worker(self) -> None:
        self.workers.kill(self.worker)
        self.worker = self.workers.start()  # the fresh worker: starts while the lease runs out


@pytest.fixture(scope="module")
def cluster(pg_database: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if pg_database is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432: worker fault tests need it")
    tmp = tmp_path_factory.mktemp("faults-worker")
    redis = PrivateRedis(tmp / "redis").start()
    env = subprocess_env(LETHE_DATA_DIR=str(tmp / "var"), LETHE_BOOTSTRAP_KEY=BOOTSTRAP,
                         LETHE_SECRET_KEY="test-secret", LETHE_DEVICE="cpu", LETHE_DATABASE_URL=pg_database,
                         LETHE_BROKER_URL=redis.url, LETHE_JOB_LEASE_SECONDS=str(LEASE), LETHE_RELAY_INTERVAL="0.1",
                         LETHE_WEBHOOKS_ALLOW_PRIVATE="true", OMP_NUM_THREADS="1",
                         # the audit is not under test here: one attempt per job keeps the runs short and alike
                         LETHE_AUDIT_MIA_AUC_MAX="0.95")
    server = Server(env, tmp / "serve.log")
    workers = Workers(env, tmp / "worker.log")
    receiver = Receiver()
    try:
        worker = workers.start()
        server.start()
        with httpx.Client(base_url=server.url, headers=H, timeout=30) as http:
            hook = http.post("/webhooks", json={"url": f"http://127.0.0.1:{receiver.server_port}/hook",
                                                "events": ["request.completed", "version.promoted"]})
            assert hook.status_code == 201, hook.text
            yield Cluster(server=server, workers=workers, db=Db(pg_database), receiver=receiver, http=http,
                          worker=worker)
    finally:
        workers.stop_all()
        server.stop()
        redis.stop()
        receiver.shutdown()
        _truncate(pg_database)


def _weights() -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    shapes = {"net.0": (HIDDEN, D), "net.2": (HIDDEN, HIDDEN), "net.4": (3, HIDDEN)}
    tensors = {}
    for name, (out, inp) in shapes.items():
        tensors[f"{name}.weight"] = (rng.normal(size=(out, inp)) / np.sqrt(inp)).astype(np.float32)
        tensors[f"{name}.bias"] = np.zeros(out, np.float32)
    return save(tensors)


def _finished(c: Cluster, job_id: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = c.http.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    job = wait_until(done, timeout, f"job {job_id} to finish", interval=0.25)
    assert job["status"] == "completed", (job["error"], tail(c.workers.log))
    return job


def _wait_phase(c: Cluster, job_id: str, phase: str) -> None:
    def reached() -> bool:
        row = c.db.job(job_id)
        assert row.status in ("queued", "running"), f"job {job_id} ended ({row.status}) before phase {phase}"
        return row.phase == phase

    wait_until(reached, 120, f"job {job_id} to enter phase {phase}", interval=0.02)


def _under_lock_in(conn: sa.Connection, job_id: str, phase: str) -> None:
    status, now = conn.execute(sa.text("SELECT status, phase FROM jobs WHERE id = :j"), {"j": job_id}).one()
    assert (status, now) == ("running", phase), f"missed phase {phase}: the job is {status} in {now}"


def _kill_in(c: Cluster, job_id: str, phase: str, run_id: str | None = None) -> dict[str, Any]:
    """SIGKILL the worker while `job_id` is in `phase`; returns what the job had persisted at that moment."""
    job_lock = ("SELECT id FROM jobs WHERE id = :j FOR NO KEY UPDATE", {"j": job_id})
    if phase == "scoring":
        _wait_phase(c, job_id, phase)
        with c.db.hold(("SELECT id FROM influence_runs WHERE id = :r FOR UPDATE", {"r": run_id}), job_lock) as conn:
            _under_lock_in(conn, job_id, phase)
            time.sleep(0.5)  # mid-computation (its result cannot be stored while we hold the run's row)
            c.kill_worker()
    elif phase in ("unlearning", "auditing"):
        _wait_phase(c, job_id, phase)
        with c.db.hold(job_lock) as conn:
            _under_lock_in(conn, job_id, phase)
            if phase == "auditing":  # let the audit be recorded: the re-run must resume from it, not redo it
                wait_until(lambda: c.db.one("SELECT count(*) FROM audits WHERE job_id = :j", j=job_id)[0] == 1,
                           60, "the audit record")
            c.kill_worker()
    else:  # registering: hold the model row from before the phase; the final transaction waits on it
        _wait_phase(c, job_id, "auditing")
        model_id = c.db.one("SELECT model_id FROM jobs WHERE id = :j", j=job_id)[0]
        with c.db.hold(("SELECT id FROM models WHERE id = :m FOR NO KEY UPDATE", {"m": model_id})):
            _wait_phase(c, job_id, "registering")
            wait_until(lambda: c.db.lock_waiters() > 0, 60, "the registering transaction to wait on the model row")
            c.kill_worker()
    at_kill = c.db.job(job_id)
    assert at_kill.status == "running" and at_kill.phase == phase, at_kill
    return {"timings": dict(at_kill.timings or {}), "attempts": at_kill.attempts}


def _ledger(c: Cluster) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        page = c.http.get("/ledger", params={"limit": 1000} | ({"cursor": cursor} if cursor else {})).json()
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


def _lineage(c: Cluster, name: str, seed: int) -> str:
    """A dataset and a model of its own (a tombstone covers its dataset's other models); returns v1's score job."""
    http = c.http
    assert http.post("/datasets", data={"name": name}, files={"file": ("d.npz", npz_bytes(
        n=N, n_test=N_TEST, d=D, seed=seed))}).status_code == 201
    assert http.post("/models", json={
        "name": name, "dataset": name, "architecture": {"kind": "mlp", "hidden": [HIDDEN, HIDDEN]},
        "policy": {"algorithm": "finetune", "params": {"epochs": 4, "batch_size": 32}}}).status_code == 201
    v1 = http.post(f"/models/{name}/versions", files={"weights": ("w", _weights())})
    assert v1.status_code == 201, v1.text
    return v1.json()["score_job_id"]


def _forget(c: Cluster, name: str) -> tuple[str, str]:
    """The two lowest-influence points (free) and a random sample of the others (an unbiased audit set: mostly
    pending, some free); returns (request id, job id)."""
    ids = [i["point_id"] for i in c.http.get(f"/models/{name}/versions/1/influence?limit=1000").json()["items"]]
    pending = list(np.random.default_rng(0).choice(ids[2:], N_FORGET, replace=False))
    forget = c.http.post("/forget", json={"model": name, "point_ids": ids[:2] + pending, "reason": "gdpr",
                                          "requested_by": "dpo"})
    assert forget.status_code == 202, forget.text
    return forget.json()["request_id"], forget.json()["job_id"]


@pytest.mark.parametrize("phase", ["scoring", "unlearning", "auditing", "registering"])
def test_worker_killed_in_a_phase_the_job_finishes_once(cluster: Cluster, phase: str) -> None:
    c, name = cluster, f"kill-{phase}"
    score1 = _lineage(c, name, seed=len(phase))
    at_kill: dict[str, Any] = {}
    if phase == "scoring":
        run_id = c.db.one("SELECT id FROM influence_runs WHERE job_id = :j", j=score1)[0]
        at_kill = _kill_in(c, score1, "scoring", run_id=run_id)
    _finished(c, score1, 120)
    request_id, job_id = _forget(c, name)
    if phase != "scoring":
        at_kill = _kill_in(c, job_id, phase)
    job = _finished(c, job_id, 150)

    # the job finished in a later attempt (after the kill)
    killed_job = score1 if phase == "scoring" else job_id
    assert c.http.get(f"/jobs/{killed_job}").json()["attempts"] > at_kill["attempts"]
    if phase in ("auditing", "registering"):  # resumed from the recorded audit: no second unlearning run
        assert job["timings"]["unlearning"] == at_kill["timings"]["unlearning"]
    _once(c, name, request_id, job)


def _once(c: Cluster, name: str, request_id: str, job: dict[str, Any]) -> None:
    """Exactly one new version; the ledger verifies and holds each event once; each webhook event sent once."""
    http, job_id = c.http, job["id"]
    model = http.get(f"/models/{name}").json()
    assert model["current"] == 2 and [v["version"] for v in model["versions"]] == [1, 2]
    assert job["result"]["ref"] == f"{name}@2"
    assert {"pruning", "registering"} <= set(job["timings"]), job["timings"]  # (a resumed attempt is not re-timed)
    assert http.get(f"/requests/{request_id}").json()["status"] == "completed"
    version = http.get(f"/models/{name}/versions/2").json()
    assert version["audit"]["candidate"]["sha256"] == version["sha256"]  # the audited weights are the ones served
    jobs = [j for j in http.get("/jobs", params={"limit": 1000}).json()["items"] if j["model"] == name]
    assert Counter((j["kind"], j["version"]) for j in jobs) == {("score", 1): 1, ("unlearn", 1): 1, ("score", 2): 1}
    score2 = next(j["id"] for j in jobs if j["kind"] == "score" and j["version"] == 2)
    _finished(c, score2, 120)  # leave the worker idle for the next test

    # the ledger verifies and shows every event of this lineage once (once per attempt: job.started, audits)
    assert http.get("/ledger/verify").json()["ok"]
    entries = _ledger(c)
    versions = {e["subject_id"]: e["data"]["ref"] for e in entries
                if e["event"] == "version.registered" and e["data"]["ref"].startswith(f"{name}@")}
    assert sorted(versions.values()) == [f"{name}@1", f"{name}@2"]
    ours = {j["id"] for j in jobs} | {request_id} | set(versions)
    counts = Counter((e["event"], e["subject_id"], e["data"].get("attempt")) for e in entries
                     if e["subject_id"] in ours)
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not twice, f"events recorded more than once: {twice}"
    events = Counter((event, subject) for event, subject, _ in counts)
    assert {j["id"]: events[("job.started", j["id"])] for j in jobs} == {
        j["id"]: http.get(f"/jobs/{j['id']}").json()["attempts"] for j in jobs}  # one per claim
    for event in ("points.pruned", "job.completed"):
        assert events[(event, job_id)] == 1, event
    audits = c.db.all("SELECT attempt, passed FROM audits WHERE job_id = :j ORDER BY attempt", j=job_id)
    assert [a.attempt for a in audits] == list(range(1, len(audits) + 1)) and audits[-1].passed
    assert events[("audit.recorded", job_id)] == len(audits)
    v1_id, v2_id = sorted(versions, key=versions.get)
    assert events[("scores.computed", v1_id)] == 1 and events[("version.revoked", v1_id)] == 1
    assert events[("version.registered", v2_id)] == 1 and events[("version.promoted", v2_id)] == 1
    assert c.db.one("SELECT count(*) FROM outbox WHERE job_id = :j", j=job_id)[0] == 1

    # webhook events: queued once each and delivered once each
    wait_until(lambda: c.receiver.of("request.completed", request_id=request_id)
               and c.receiver.of("version.promoted", ref=f"{name}@2"), 30, "webhook deliveries")
    time.sleep(0.5)
    assert len(c.receiver.of("request.completed", request_id=request_id)) == 1
    assert len(c.receiver.of("version.promoted", ref=f"{name}@2")) == 1
    deliveries = http.get("/webhooks/deliveries").json()["items"]
    assert len([d for d in deliveries if d["event_type"] == "request.completed"
                and d["payload"]["data"]["request_id"] == request_id]) == 1


def _pause_outside_a_transaction(c: Cluster, proc: Any) -> None:
    """SIGSTOP a worker at a moment when no transaction is open (a paused one would hold its row locks)."""
    for _ in range(30):
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        busy = c.db.one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')")[0]
        if busy == 0:
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.1)
    pytest.fail("could not pause the worker outside a transaction")


def test_a_worker_paused_past_its_lease_does_not_finish_the_job_a_second_time(cluster: Cluster) -> None:
    """The lease lapses while the worker is frozen (GC pause, VM migration, SIGSTOP): another worker runs the
    job; the first one, resumed, notices at its next write that its claim was replaced and drops its run."""
    c, name = cluster, "paused"
    _finished(c, _lineage(c, name, seed=7), 120)
    request_id, job_id = _forget(c, name)
    _wait_phase(c, job_id, "unlearning")
    paused = c.worker
    _pause_outside_a_transaction(c, paused)
    try:
        c.worker = c.workers.start()
        job = _finished(c, job_id, 150)
        assert job["attempts"] == 2
    finally:
        paused.send_signal(signal.SIGCONT)

    def stale_run_over() -> bool:  # dropped (the fix), or it went on to record results (the bug)
        dropped = "lost its lease to another worker" in c.workers.log.read_text(errors="replace")
        return dropped or len(c.http.get(f"/models/{name}").json()["versions"]) > 2 or c.db.one(
            "SELECT count(*) FROM audits WHERE job_id = :j", j=job_id)[0] > job["result"]["metrics"]["attempts"][-1][
            "attempt"]

    wait_until(stale_run_over, 60, "the resumed worker to end its stale run")
    time.sleep(1)
    assert paused.poll() is None  # it dropped the run, it did not crash
    after = c.http.get(f"/jobs/{job_id}").json()
    _once(c, name, request_id, after)
    assert (after["status"], after["phase"], after["progress"]) == ("completed", None, 1.0)  # not overwritten
    assert after["finished_at"] == job["finished_at"]
    paused.terminate()
    paused.wait(timeout=30)
