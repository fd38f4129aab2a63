"""GET /metrics after a real forget flow (HTTP → DB → pipeline inline): the numbers are the database's."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import create_model, drain, upload_dataset

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    resp = client.get("/metrics")  # no Authorization header: Prometheus scrapes without a key
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_follow_a_forget_flow(client: TestClient, admin_headers: dict[str, str]) -> None:
    from app.metrics import exported_names

    h = admin_headers
    empty = scrape(client)
    ours = exported_names()  # (other collectors, e.g. OpenDSR's, may share the registry)
    assert {name for name, _ in empty} & ours == ours - {"lethe_mia_auc"}  # no audited version yet
    assert value(empty, "lethe_forget_requests_total", outcome="completed") == 0
    assert value(empty, "lethe_queue_oldest_age_seconds") == 0

    _train_and_score(client, h)
    body = _forget(client, h)
    job = client.get(f"/jobs/{body['job_id']}", headers=h).json()
    assert job["status"] == "completed", job["error"]
    done = scrape(client)
    _dispositions_and_jobs(client, h, done, body, job)
    _phases(done, job["timings"])
    _audits(done, job)
    _savings(done, job)
    after = _free_only_request(client, h, job)

    # bounded labels: the flow added no series (only the AUC gauge appears once a version is audited),
    # and nothing names a model or a tenant
    assert {k for k in after if k[0] in ours - {"lethe_mia_auc"}} == {k for k in empty if k[0] in ours}
    assert "toy" not in client.get("/metrics").text
    _memoised(client, after)


def _train_and_score(client: TestClient, h: dict[str, str]) -> None:
    """toy@1 trained and scored: the queue while it waits, then the jobs, scores and latencies."""
    upload_dataset(client, h, n=300, n_test=100)
    create_model(client, h, policy={"algorithm": "finetune", "q_forget": 0.5, "q_retain": 0.2})
    assert client.post("/models/toy/train", headers=h).status_code == 202
    queued = scrape(client)
    assert value(queued, "lethe_queue_depth", kind="train") == 1
    assert value(queued, "lethe_queue_oldest_age_seconds") > 0
    drain()
    trained = scrape(client)
    assert value(trained, "lethe_jobs_total", kind="train", status="completed") == 1
    assert value(trained, "lethe_jobs_total", kind="score", status="completed") == 1
    assert value(trained, "lethe_queue_depth", kind="train") == 0
    assert value(trained, "lethe_scored_points_total", method="gradnorm") == 300
    assert value(trained, "lethe_scoring_seconds_total", method="gradnorm") > 0
    assert value(trained, "lethe_job_latency_seconds_count", kind="train") == 1
    assert value(trained, "lethe_job_phase_seconds_count", kind="train", phase="training", algorithm="none") == 1
    assert value(trained, "lethe_compute_seconds_total", kind="train") > 0


def _forget(client: TestClient, h: dict[str, str]) -> dict:
    """A request of 3 free points and 20 pending, seen open while its job waits; its job run. The answer."""
    ids = [i["point_id"] for i in client.get("/models/toy/versions/1/influence?limit=1000", headers=h).json()["items"]]
    # 3 free (below the 10% quantile), 20 pending between it and the 25% prune bound: q_forget=0.5 prunes 10
    resp = client.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[:3] + ids[40:60],
                                                   "reason": "gdpr", "requested_by": "dpo"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert len(body["free"]) == 3 and len(body["pending"]) == 20
    accepted = scrape(client)
    assert value(accepted, "lethe_forget_requests_open") == 1
    assert value(accepted, "lethe_forget_points_pending") == 20
    assert value(accepted, "lethe_forget_points_total", disposition="free") == 3
    assert value(accepted, "lethe_queue_depth", kind="unlearn") == 1
    drain()
    return body


def _dispositions_and_jobs(client: TestClient, h: dict[str, str], done: Samples, body: dict, job: dict) -> None:
    req = client.get(f"/requests/{body['request_id']}", headers=h).json()
    disp = [p["disposition"] for p in req["points"]]
    assert value(done, "lethe_forget_requests_total", outcome="completed") == 1
    assert value(done, "lethe_forget_requests_open") == 0
    assert value(done, "lethe_forget_points_pending") == 0
    for d in ("free", "pruned", "unlearned"):
        assert value(done, "lethe_forget_points_total", disposition=d) == disp.count(d)
    assert disp.count("pruned") == 10 == job["result"]["pruned"]["forget"]["n"]
    assert value(done, "lethe_pruned_points_total", set="forget") == 10
    assert value(done, "lethe_pruned_points_total", set="retain") == job["result"]["pruned"]["retain"]["n"] > 0
    assert value(done, "lethe_jobs_total", kind="unlearn", status="completed") == 1
    assert value(done, "lethe_queue_depth", kind="unlearn") == 0


def _phases(done: Samples, timings: dict[str, float]) -> None:
    """One observation per phase of the unlearning job, its seconds as the sum."""
    for phase in ("scoring", "pruning", "unlearning", "auditing", "registering"):
        labels = {"kind": "unlearn", "phase": phase, "algorithm": "finetune"}
        assert value(done, "lethe_job_phase_seconds_count", **labels) == 1
        assert value(done, "lethe_job_phase_seconds_bucket", le="+Inf", **labels) == 1
        seconds = sum(v for k, v in timings.items() if k.split("#")[0] == phase)
        assert value(done, "lethe_job_phase_seconds_sum", **labels) == pytest.approx(seconds, abs=1e-6)
    assert value(done, "lethe_job_latency_seconds_count", kind="unlearn") == 1
    assert value(done, "lethe_compute_seconds_total", kind="unlearn") == pytest.approx(sum(timings.values()), rel=1e-6)


def _audits(done: Samples, job: dict) -> None:
    """Every attempt's audit by algorithm and verdict, and the current version's MIA AUC."""
    audit, m = job["result"]["audit"], job["result"]["metrics"]
    for attempt in m["attempts"]:  # an attempt that was not promoted escalates
        result = attempt["verdict"]  # passed | failed | inconclusive (no pool in these tests: inconclusive)
        n = sum(1 for a in m["attempts"] if a["algorithm"] == attempt["algorithm"] and a["verdict"] == result)
        assert value(done, "lethe_audits_total", algorithm=attempt["algorithm"], result=result) == n
    assert sum(v for (name, _), v in done.items() if name == "lethe_audits_total") == len(m["attempts"])
    assert value(done, "lethe_audited_models") == 1
    assert value(done, "lethe_mia_auc", stat="mean") == pytest.approx(audit["after"]["mia"]["auc"])
    assert value(done, "lethe_mia_auc_threshold") == 0.55


def _unlearning_seconds(job: dict) -> tuple[float, int]:
    """The job's unlearning seconds and the points it kept."""
    m = job["result"]["metrics"]
    return (sum(v for k, v in job["timings"].items() if k.split("#")[0] == "unlearning"),
            m["n_forget_kept"] + m["n_retain_kept"])


def _savings(done: Samples, job: dict) -> None:
    """Seconds saved, estimated against the unpruned run (linear in the points processed)."""
    u, kept = _unlearning_seconds(job)
    pruned = job["result"]["pruned"]["forget"]["n"] + job["result"]["pruned"]["retain"]["n"]
    assert value(done, "lethe_saved_seconds_total", source="pruning") == pytest.approx(u * pruned / kept, rel=1e-6)
    assert value(done, "lethe_saved_seconds_total", source="free") == pytest.approx(u * 3 / kept, rel=1e-6)


def _free_only_request(client: TestClient, h: dict[str, str], job: dict) -> Samples:
    """A request answered entirely free spares a whole job: valued at the lineage's first unlearning job."""
    v2 = client.get("/models/toy/versions/2/influence?limit=1000", headers=h).json()
    assert v2["status"] == "completed"
    free_only = client.post("/forget", headers=h, json={"model": "toy", "point_ids": [v2["items"][0]["point_id"]],
                                                        "reason": "gdpr", "requested_by": "dpo"})
    assert free_only.status_code == 200 and free_only.json()["job_id"] is None, free_only.text
    after = scrape(client)
    u, kept = _unlearning_seconds(job)
    spared = sum(v for k, v in job["timings"].items()
                 if k.split("#")[0] in ("unlearning", "auditing", "registering"))
    assert value(after, "lethe_saved_seconds_total", source="free") == pytest.approx(u * 3 / kept + spared, rel=1e-6)
    assert value(after, "lethe_forget_requests_total", outcome="completed") == 2
    assert value(after, "lethe_forget_points_total", disposition="free") == 4
    return after


def _memoised(client: TestClient, after: Samples) -> None:
    """Jobs finished over an hour ago are summed once per process (memoised), with the same numbers."""
    from datetime import timedelta

    from sqlalchemy import select

    from app.db import session_scope
    from app.jobs.tables import Job

    with session_scope() as session:
        for row in session.scalars(select(Job)):
            row.created_at -= timedelta(days=2)
            row.finished_at -= timedelta(days=2)
    jobs_series = ("lethe_job_", "lethe_compute_", "lethe_saved_", "lethe_pruned_")
    for _ in range(2):  # first scrape fills the memo, the second reads it
        settled = scrape(client)
        for key, v in after.items():
            if key[0].startswith(jobs_series):
                assert settled[key] == pytest.approx(v, rel=1e-9, abs=1e-9), key
