"""Parquet datasets: schema and index columns checked by the API (a 422 naming the problem, nothing recorded), every
row decoded by a validation job (the dataset is `ready` only then; its failure names the bad rows), then the whole
lifecycle through HTTP and a real worker, and erasure that removes the erased rows from the file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app import artifacts
from app.settings import get_settings
from tests.factories import parquet_bytes, upload_parquet
from tests.workers.test_worker import forget_and_wait, wait_for, worker_stack

CNN = {"kind": "cnn", "channels": [4], "hidden": 16}


@pytest.fixture
def stack(sqlite_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    yield from worker_stack({"backend": "sqlite", **sqlite_env}, monkeypatch)


def _ids_in_file(uri: str) -> set[str]:
    return set(pq.read_table(artifacts.path_of(uri), columns=["point_id"]).column(0).to_pylist())


def test_a_parquet_image_dataset_goes_through_every_feature_with_a_worker(stack: TestClient,
                                                                        admin_headers: dict[str, str]) -> None:
    h = admin_headers
    ds = upload_parquet(stack, h, n=120, n_test=60)
    assert ds["format"] == "parquet" and ds["features"] == "image" and ds["input_shape"] == [1, 8, 8]
    assert ds["n_points"] == 120 and ds["n_test"] == 60 and ds["has_subjects"] and ds["validation_job"]
    validated = wait_for(stack, h, ds["validation_job"])
    assert validated["status"] == "completed", validated["error"]
    assert validated["kind"] == "validate" and validated["dataset"] == "pq" and validated["model"] is None
    assert stack.get("/datasets/pq", headers=h).json()["status"] == "ready"

    created = stack.post("/models", headers=h, json={
        "name": "img", "dataset": "pq", "architecture": CNN, "recipe": {"epochs": 6, "batch_size": 32, "lr": 0.05},
        "policy": {"scorer": "gradnorm", "algorithm": "finetune", "params": {"epochs": 1}}})
    assert created.status_code == 201, created.text
    trained = wait_for(stack, h, stack.post("/models/img/train", headers=h).json()["job_id"])
    assert trained["status"] == "completed", trained["error"]
    assert trained["result"]["metrics"]["test_accuracy"] > 0.6  # the stripes are learnable from decoded pixels
    assert wait_for(stack, h, trained["result"]["score_job_id"])["status"] == "completed"
    scores = stack.get("/models/img/versions/1/influence", headers=h, params={"method": "gradnorm", "limit": 1000})
    assert scores.json()["total"] == 120

    before = stack.get("/datasets/pq", headers=h).json()
    uri_before = _dataset_uri("pq")
    assert {"p0012", "p0013", "p0014", "p0015"} <= _ids_in_file(uri_before)
    job = forget_and_wait(stack, h, model="img", subject_ids=["s003"])
    assert job["result"]["ref"] == "img@2" and {"ua", "ra", "ta"} <= set(job["result"]["audit"]["after"])
    assert stack.get("/models/img", headers=h).json()["current"] == 2

    # the unlearned subject's rows are erased: gone from the Parquet file, zeroed in the decoded cache
    after = stack.get("/datasets/pq", headers=h).json()
    assert after["n_erased"] == 4 and after["sha256"] != before["sha256"]
    uri_after = _dataset_uri("pq")
    ids = _ids_in_file(uri_after)
    assert not ids & {"p0012", "p0013", "p0014", "p0015"} and len(ids) == 180 - 4
    assert not artifacts.path_of(uri_before).exists()
    from workers.engine.parquet import load_cache

    x = load_cache(artifacts.path_of(uri_after))["x"]
    assert not x[12:16].any() and x[16].any()
    assert stack.get("/ledger/verify", headers=h).json()["ok"]

    # a new training runs on the erased file, without the forgotten subject
    retrained = wait_for(stack, h, stack.post("/models/img/train", headers=h).json()["job_id"])
    assert retrained["status"] == "completed", retrained["error"]
    version = retrained["result"]["version"]
    assert stack.get(f"/models/img/versions/{version}", headers=h).json()["n_train"] == 116


def _dataset_uri(name: str) -> str:
    from app.datasets.tables import Dataset
    from app.db import session_scope

    with session_scope(readonly=True) as s:
        return s.scalar(select(Dataset.uri).where(Dataset.name == name))


def _dup(c: dict[str, Any]) -> None:
    c["point_id"][5] = c["point_id"][4]


def _null_label(c: dict[str, Any]) -> None:
    labels = c["label"].to_pylist()
    labels[7] = None
    c["label"] = pa.array(labels, pa.int64())


def _null_id(c: dict[str, Any]) -> None:
    c["point_id"][3] = None


@pytest.mark.parametrize(("kw", "expected"), [
    ({"mutate": _dup}, "'p0004' occurs more than once"),
    ({"mutate": lambda c: c.pop("label")}, "lacks required column(s) label"),
    ({"features": "x", "shape_meta": "[1, 7, 7]"}, "holds 64 values per row but lethe.shape [1, 7, 7] holds 49"),
    ({"mutate": _null_label}, "column label has nulls (first at row 7)"),
    ({"mutate": _null_id}, "column point_id has nulls (first at row 3)"),
    ({"mutate": lambda c: c.update(split=["train"] * 150 + ["holdout"] * 10)}, "row 150 has 'holdout'"),
    ({"mutate": lambda c: c.update(label=[str(v) for v in c["label"].to_pylist()])}, "label must hold integers"),
    ({"mutate": lambda c: c.update(x=c["image"])}, "exactly one feature column"),
    ({"mutate": lambda c: c.update(image=[b"not an image"] * 160)}, "the first image is not a PNG or JPEG"),
])
def test_a_malformed_parquet_is_422_naming_the_problem_with_nothing_recorded(
        client: TestClient, admin_headers: dict[str, str], kw: dict[str, Any], expected: str) -> None:
    from app.db import session_scope
    from app.jobs.tables import Job
    from app.ledger.tables import LedgerEntry

    resp = client.post("/datasets", headers=admin_headers, data={"name": "bad"},
                       files={"file": ("bad.parquet", parquet_bytes(**kw), "application/octet-stream")})
    assert resp.status_code == 422, resp.text
    assert expected in resp.json()["detail"]
    assert client.get("/datasets", headers=admin_headers).json()["total"] == 0
    with session_scope(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).where(LedgerEntry.event == "dataset.registered")) == 0
    assert not list((get_settings().artifacts / "datasets").glob("*"))


def test_models_wait_for_validation_and_a_failed_one_names_its_bad_rows(client: TestClient,
                                                                        admin_headers: dict[str, str]) -> None:
    """No worker here: the validation job stays queued until run in this process."""
    from tests.factories import drain

    h = admin_headers

    def corrupt(c: dict[str, Any]) -> None:
        images = c["image"].to_pylist()
        images[9] = b"\x89PNG broken"
        images[11] = images[11][: len(images[11]) // 2]
        c["image"] = pa.array(images, pa.binary())

    good = upload_parquet(client, h, name="good")
    bad = upload_parquet(client, h, name="bad", mutate=corrupt)
    assert good["status"] == bad["status"] == "validating"
    early = client.post("/models", headers=h, json={"name": "m", "dataset": "good", "architecture": CNN})
    assert early.status_code == 409 and "still validating" in early.json()["detail"]
    drain()
    assert client.get("/datasets/good", headers=h).json()["status"] == "ready"
    failed = client.get("/datasets/bad", headers=h).json()
    assert failed["status"] == "failed"
    assert "2 row(s) could not be decoded" in failed["error"] and "p0009" in failed["error"] \
        and "p0011" in failed["error"]
    job = client.get(f"/jobs/{failed['validation_job']}", headers=h).json()
    assert job["status"] == "failed" and "p0009" in job["error"] and job["result"]["n_bad"] == 2
    refused = client.post("/models", headers=h, json={"name": "m", "dataset": "bad", "architecture": CNN})
    assert refused.status_code == 422 and "failed validation" in refused.json()["detail"]
    assert client.post("/models", headers=h, json={"name": "m", "dataset": "good",
                                                   "architecture": CNN}).status_code == 201


def test_a_parquet_file_registers_by_reference_from_the_import_directory(client: TestClient,
                                                                         admin_headers: dict[str, str]) -> None:
    from tests.factories import drain

    h = admin_headers
    tenant = client.get("/keys", headers=h).json()["items"][0]["tenant_id"]
    original = get_settings().imports / tenant / "feats.parquet"
    original.parent.mkdir(parents=True)
    original.write_bytes(parquet_bytes(features="x", n=40, n_test=0, subjects=False))
    resp = client.post("/datasets", headers=h, json={"name": "feats", "uri": "feats.parquet"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["by_reference"] and body["features"] == "x" and body["input_shape"] == [1, 8, 8]
    assert body["n_test"] == 0 and not body["has_subjects"]
    drain()
    assert client.get("/datasets/feats", headers=h).json()["status"] == "ready"
    from workers.engine.parquet import load_cache

    cache = load_cache(artifacts.path_of(_dataset_uri("feats")))
    table = pq.read_table(original)
    assert cache["x"].shape == (40, 1, 8, 8) and set(cache) == {"x", "y"}
    assert (cache["x"][5].ravel() == table.column("x")[5].values.to_numpy()).all()


def test_a_text_dataset_validates_and_kinds_without_a_tokeniser_are_refused(client: TestClient,
                                                                           admin_headers: dict[str, str]) -> None:
    import io

    from tests.factories import drain

    table = pa.table({"point_id": [f"t{i}" for i in range(12)], "label": pa.array([i % 2 for i in range(12)]),
                      "text": [f"sentence number {i}" for i in range(12)]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    resp = client.post("/datasets", headers=admin_headers, data={"name": "txt"},
                       files={"file": ("t.parquet", buf.getvalue(), "application/octet-stream")})
    assert resp.status_code == 201 and resp.json()["features"] == "text", resp.text
    drain()
    assert client.get("/datasets/txt", headers=admin_headers).json()["status"] == "ready"
    refused = client.post("/models", headers=admin_headers, json={"name": "m", "dataset": "txt",
                                                                  "architecture": {"kind": "mlp"}})
    assert refused.status_code == 422 and "holds text" in refused.json()["detail"]
    assert "no encode() to tokenise strings" in refused.json()["detail"]  # bag: tests/workers/test_text_dataset.py
    assert client.get("/models", headers=admin_headers).json()["total"] == 0
