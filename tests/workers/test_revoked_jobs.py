"""Jobs whose version was revoked (its weights purged by an unlearned version's promotion) before they ran end
cancelled with the reason, never failed with a missing file: through HTTP, then the worker's own code
(runner.run_inline, what a worker's task calls), run in the order that exposes the race."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.jobs.enums import JobKind
from tests.factories import create_model, drain, upload_dataset
from workers.jobs import runner


def _trained_toy(client: TestClient, h: dict[str, str]) -> list[str]:
    """toy@1 trained and scored in-process; its point ids."""
    upload_dataset(client, h, n=120, n_test=40)
    create_model(client, h, recipe={"epochs": 3, "batch_size": 32, "lr": 0.01})
    assert client.post("/models/toy/train", headers=h).status_code == 202
    drain()
    return [i["point_id"] for i in client.get("/models/toy/versions/1/influence", headers=h,
                                              params={"limit": 1000}).json()["items"]]


def _job(client: TestClient, h: dict[str, str], job_id: str) -> dict:
    return client.get(f"/jobs/{job_id}", headers=h).json()


def test_jobs_of_a_version_revoked_before_they_ran_end_cancelled_with_the_reason(
        client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    ids = _trained_toy(client, h)
    # queued for v1, not run yet: another scorer and a calibration
    score = client.post("/models/toy/versions/1/influence", headers=h, json={"method": "hessian"}).json()["job_id"]
    calibrate = client.post("/models/toy/versions/1/calibrate", headers=h,
                            json={"grid": [4], "compare": []}).json()["job_id"]
    forget = client.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[-6:], "reason": "gdpr",
                                                     "requested_by": "dpo"})
    assert forget.status_code == 202, forget.text
    # the unlearning job runs first: it promotes v2 and revokes v1 (weights, checkpoints and scores purged)
    assert runner.run_inline(forget.json()["job_id"]) == "completed"
    assert client.get("/models/toy/versions/1", headers=h).json()["status"] == "revoked"

    for job_id, kind in ((score, JobKind.SCORE), (calibrate, JobKind.CALIBRATE)):
        assert runner.run_inline(job_id) in ("skipped", "cancelled")
        job = _job(client, h, job_id)
        assert job["kind"] == kind and job["status"] == "cancelled", job
        assert job["error"] is None
        assert "toy@1 was revoked" in job["result"]["reason"], job["result"]
    cancelled = [e for e in client.get("/ledger", headers=h, params={"event": "job.cancelled", "limit": 100}
                                       ).json()["items"] if e["subject_id"] in (score, calibrate)]
    assert len(cancelled) == 2 and all("was revoked" in e["data"]["reason"] for e in cancelled)
    assert not client.get("/ledger", headers=h, params={"event": "job.failed"}).json()["items"]
    # v1's run of that scorer is not left queued forever
    runs = {r["method"]: r["status"] for r in client.get("/models/toy/versions/1", headers=h).json()["influence"]}
    assert runs["hessian"] != "queued"
    # asking a revoked version for more work is 410, not a job that cannot run
    assert client.post("/models/toy/versions/1/influence", headers=h, json={"method": "less"}).status_code == 410
    assert client.post("/models/toy/versions/1/calibrate", headers=h, json={"grid": [4]}).status_code == 410
    drain()  # v2's own scoring runs as usual
    assert client.get("/models/toy/versions/2/influence", headers=h).json()["status"] == "completed"
    assert client.get("/ledger/verify", headers=h).json()["ok"]


@pytest.mark.parametrize("kind", ["score", "calibrate"])
def test_a_job_running_when_its_version_is_revoked_ends_cancelled(
        kind: str, client: TestClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The race revocation at queue time cannot cover: the job was claimed first, then the unlearning job's
    promotion purged the weights it was about to load."""
    from workers.jobs import calibrate, scoring

    h = admin_headers
    ids = _trained_toy(client, h)
    if kind == "score":
        job_id = client.post("/models/toy/versions/1/influence", headers=h, json={"method": "less"}).json()["job_id"]
    else:
        job_id = client.post("/models/toy/versions/1/calibrate", headers=h,
                             json={"grid": [4], "compare": []}).json()["job_id"]
    unlearn_job = client.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[-6:], "reason": "gdpr",
                                                          "requested_by": "dpo"}).json()["job_id"]
    module, name = (scoring, "compute") if kind == "score" else (calibrate, "_scores")
    real = getattr(module, name)

    def revoked_meanwhile(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(module, name, real)
        assert runner.run_inline(unlearn_job) == "completed"  # promotes v2, revokes v1, purges its weights
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, revoked_meanwhile)
    assert runner.run_inline(job_id) == "cancelled"
    job = _job(client, h, job_id)
    assert job["status"] == "cancelled" and job["error"] is None and "toy@1 was revoked" in job["result"]["reason"]
    assert not client.get("/ledger", headers=h, params={"event": "job.failed"}).json()["items"]
    if kind == "score":  # nothing was stored for the revoked version
        runs = {r["method"]: r["status"] for r in client.get("/models/toy/versions/1", headers=h).json()["influence"]}
        assert runs["less"] == "cancelled"
    assert client.get("/ledger/verify", headers=h).json()["ok"]
