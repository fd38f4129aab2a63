"""A plugin kind with its own encode() and loss() (tests/fixtures/lethe_toy_plugin: `toyenc`, whose network takes
keyword inputs only encode() makes) runs through HTTP and a real worker; what its loss rules out (hessian, imu)
and what it declares unsupported are a 422 at request time naming why, never a failed job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.factories import upload_dataset
from tests.registry.test_model_plugins import toy_plugin  # noqa: F401 - the fixture installing the package
from tests.workers.test_worker import train_and_wait, wait_for, worker_stack

ARCH = {"kind": "toyenc", "channels": 4}


@pytest.fixture
def stack(toy_plugin: str, sqlite_env: dict[str, str],  # noqa: F811 - the imported fixture
          monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    yield from worker_stack({"backend": "sqlite", **sqlite_env}, monkeypatch)


def test_a_plugin_with_encode_and_loss_runs_and_what_it_rules_out_is_a_422(stack: TestClient,
                                                                         admin_headers: dict[str, str]) -> None:
    h = admin_headers
    upload_dataset(stack, h, n=160, n_test=60, d=16)
    for policy, named in (({"scorer": "hessian"}, "hessian cannot apply to a 'toyenc' model: K-FAC"),
                          ({"algorithm": "imu"}, "imu cannot apply to a 'toyenc' model: imu refits"),
                          ({"scorer": "less_own"}, "less_own cannot apply to a 'toyenc' model: the toy says so")):
        bad = stack.post("/models", headers=h, json={"name": "enc", "dataset": "toy", "architecture": ARCH,
                                                     "policy": policy})
        assert bad.status_code == 422 and named in bad.json()["detail"], bad.text
    created = stack.post("/models", headers=h, json={
        "name": "enc", "dataset": "toy", "architecture": ARCH,
        "recipe": {"epochs": 4, "batch_size": 32, "lr": 0.02, "checkpoints": 2},
        "policy": {"scorer": "gradnorm", "algorithm": "scrub", "params": {"epochs": 1}}})
    assert created.status_code == 201, created.text

    trained = train_and_wait(stack, h, "enc")  # model(x) would be a TypeError: encode was applied
    assert wait_for(stack, h, trained["result"]["score_job_id"])["status"] == "completed"
    less = stack.post("/models/enc/versions/1/influence", headers=h, json={"method": "less"}).json()
    assert wait_for(stack, h, less["job_id"])["status"] == "completed"
    hessian = stack.post("/models/enc/versions/1/influence", headers=h, json={"method": "hessian"})
    assert hessian.status_code == 422 and "K-FAC" in hessian.json()["detail"]

    page = stack.get("/models/enc/versions/1/influence", headers=h, params={"method": "gradnorm", "limit": 1000})
    ids = [i["point_id"] for i in page.json()["items"]]
    imu = stack.post("/forget", headers=h, json={"model": "enc", "point_ids": ids[-4:], "reason": "gdpr",
                                                 "requested_by": "dpo", "algorithm": "imu"})
    assert imu.status_code == 422 and "imu refits the classifier head" in imu.json()["detail"]
    assert stack.get("/requests", headers=h).json()["total"] == 0  # nothing recorded
    resp = stack.post("/forget", headers=h, json={"model": "enc", "point_ids": ids[-8:], "reason": "gdpr",
                                                  "requested_by": "dpo"})
    assert resp.status_code == 202, resp.text
    job = wait_for(stack, h, resp.json()["job_id"])
    assert job["status"] == "completed", job["error"]
    assert job["result"]["ref"] == "enc@2" and {"ua", "ra", "ta"} <= set(job["result"]["audit"]["after"])
    assert stack.get("/ledger/verify", headers=h).json()["ok"]
