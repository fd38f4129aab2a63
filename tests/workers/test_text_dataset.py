"""A text Parquet dataset with the built-in `bag` kind, through HTTP and a real `lethe worker`: register, validate,
train, the three scorers, calibration, forget a subject, unlearn with every algorithm, audit, new versions, and
erasure of the forgotten texts; kinds that cannot read text (or a text kind on tensors) are a 422 naming why."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import artifacts
from tests.factories import text_parquet_bytes, upload_dataset
from tests.workers.test_worker import forget_and_wait, train_and_wait, unlearn_as_next_version, wait_for, worker_stack

BAG = {"kind": "bag", "buckets": 1024, "dim": 16, "hidden": 16}


@pytest.fixture
def stack(sqlite_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from workers.engine import plugins

    assert "bag" in plugins.installed_kinds(), (
        "the built-in kind 'bag' is not among the installed entry points: reinstall Lethe (pip install -e .) so its "
        "metadata has the pyproject's lethe.models entry points")
    yield from worker_stack({"backend": "sqlite", **sqlite_env}, monkeypatch)


def _uri(name: str) -> str:
    from app.datasets.tables import Dataset
    from app.db import session_scope

    with session_scope(readonly=True) as s:
        return s.scalar(select(Dataset.uri).where(Dataset.name == name))


def test_a_text_dataset_goes_through_every_feature_with_a_bag_model(stack: TestClient,
                                                                   admin_headers: dict[str, str]) -> None:
    h = admin_headers
    _registered_and_refused_to_other_kinds(stack, h)
    _trained_scored_and_calibrated(stack, h)
    _a_subject_forgotten_and_erased(stack, h)
    current = _every_other_algorithm_a_version(stack, h)
    # the newest weights upload back as a version (checked against the kind's state_shapes)
    weights = stack.get(f"/models/txt/versions/{current}/weights", headers=h).content
    assert stack.post("/models/txt/versions", headers=h,
                      files={"weights": ("w.safetensors", weights)}).status_code == 201
    assert stack.get("/ledger/verify", headers=h).json()["ok"]


def _registered_and_refused_to_other_kinds(stack: TestClient, h: dict[str, str]) -> None:
    resp = stack.post("/datasets", headers=h, data={"name": "txt"},
                      files={"file": ("t.parquet", text_parquet_bytes(n=160, n_test=60), "application/octet-stream")})
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    assert ds["features"] == "text" and ds["n_points"] == 160 and ds["has_subjects"]
    assert wait_for(stack, h, ds["validation_job"])["status"] == "completed"
    assert stack.get("/datasets/txt", headers=h).json()["status"] == "ready"
    assert "bag" in stack.get("/models/kinds", headers=h).json()["kinds"]
    # kinds that cannot read the dataset: 422 naming why, nothing recorded
    mlp = stack.post("/models", headers=h, json={"name": "m", "dataset": "txt", "architecture": {"kind": "mlp"}})
    assert mlp.status_code == 422 and "holds text" in mlp.json()["detail"] and "bag" in mlp.json()["detail"]
    upload_dataset(stack, h, name="vectors", n=40, n_test=10)
    wrong = stack.post("/models", headers=h, json={"name": "m", "dataset": "vectors", "architecture": BAG})
    assert wrong.status_code == 422 and "'bag' models read text" in wrong.json()["detail"]
    assert stack.get("/models", headers=h).json()["total"] == 0


def _trained_scored_and_calibrated(stack: TestClient, h: dict[str, str]) -> None:
    created = stack.post("/models", headers=h, json={
        "name": "txt", "dataset": "txt", "architecture": BAG,
        "recipe": {"epochs": 8, "batch_size": 32, "lr": 0.02, "checkpoints": 2},
        "policy": {"scorer": "gradnorm", "algorithm": "finetune", "params": {"epochs": 1}}})
    assert created.status_code == 201, created.text
    trained = train_and_wait(stack, h, "txt")
    assert trained["result"]["metrics"]["test_accuracy"] > 0.8  # the class words are learnt from tokenised text
    assert wait_for(stack, h, trained["result"]["score_job_id"])["status"] == "completed"
    for method in ("hessian", "less"):
        job = stack.post("/models/txt/versions/1/influence", headers=h, json={"method": method}).json()
        assert wait_for(stack, h, job["job_id"])["status"] == "completed", method
    pages = {m: stack.get("/models/txt/versions/1/influence", headers=h, params={"method": m, "limit": 1000}
                          ).json() for m in ("gradnorm", "hessian", "less")}
    for method, page in pages.items():
        assert page["status"] == "completed" and page["total"] == 160, method
    assert "embedding.weight" in pages["hessian"]["computed_by"]["untracked"]  # K-FAC: the Linear layers only
    assert pages["less"]["computed_by"]["source"] == "checkpoints"
    cal = stack.post("/models/txt/versions/1/calibrate", headers=h, json={"grid": [8], "compare": []})
    assert wait_for(stack, h, cal.json()["job_id"])["status"] == "completed"


def _a_subject_forgotten_and_erased(stack: TestClient, h: dict[str, str]) -> None:
    """Unlearned, audited, a new version, its texts erased from the file and the cache."""
    from workers.engine.parquet import load_cache

    uri_before = _uri("txt")
    forgotten = {"p0012", "p0013", "p0014", "p0015"}
    assert forgotten <= set(pq.read_table(artifacts.path_of(uri_before), columns=["point_id"]).column(0).to_pylist())
    job = forget_and_wait(stack, h, model="txt", subject_ids=["s003"])
    assert job["result"]["ref"] == "txt@2" and {"ua", "ra", "ta"} <= set(job["result"]["audit"]["after"])
    assert stack.get("/models/txt", headers=h).json()["current"] == 2
    assert stack.get("/datasets/txt", headers=h).json()["n_erased"] == 4
    table = pq.read_table(artifacts.path_of(_uri("txt")))
    assert not forgotten & set(table.column("point_id").to_pylist()) and table.num_rows == 220 - 4
    x = load_cache(artifacts.path_of(_uri("txt")))["x"]
    assert x.dtype.kind == "U" and not any(x[12:16]) and x[16]


def _every_other_algorithm_a_version(stack: TestClient, h: dict[str, str]) -> int:
    """Every other algorithm on the text model, each on points of its own, each a new version; the last."""
    from workers.engine.params import PARAMS

    ids = [i["point_id"] for i in stack.get("/models/txt/versions/2/influence", headers=h,
                                            params={"limit": 1000}).json()["items"]]
    current = 2
    for k, algorithm in enumerate(sorted(set(PARAMS) - {"finetune"})):
        params = {"epochs": 1} if "epochs" in PARAMS[algorithm].model_fields else {}
        current = unlearn_as_next_version(stack, h, "txt", ids[-4 * (k + 1):len(ids) - 4 * k], algorithm, params,
                                          current)
    return current
