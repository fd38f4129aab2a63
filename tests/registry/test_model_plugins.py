"""A model kind from a package outside Lethe's tree (tests/fixtures/lethe_toy_plugin: a residual block with
BatchNorm and a custom gate module), pip-installed into this interpreter, through the real HTTP path and a real
`lethe worker`: train, all three scorers, forget, unlearn, audit, a new version, and strict weight uploads."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.factories import upload_dataset
from tests.workers.test_worker import unlearn_as_next_version, wait_for, worker_stack

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "fixtures" / "lethe_toy_plugin"


@pytest.fixture(scope="session")
def toy_plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Install the fixture package into this interpreter (from a copy, so no build files land in the tree)."""
    from workers.engine import plugins

    src = tmp_path_factory.mktemp("plugin") / "lethe_toy_plugin"
    shutil.copytree(PLUGIN_SRC, src)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", *isolation,
                    str(src)], check=True)  # forced: an earlier run's copy may be stale
    importlib.invalidate_caches()
    assert "toyres" in plugins.installed_kinds()
    return "toyres"


@pytest.fixture
def stack(toy_plugin: str, sqlite_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The embedded stack (SQLite ledger and broker) with a real worker process."""
    yield from worker_stack({"backend": "sqlite", **sqlite_env}, monkeypatch)


def test_a_plugin_model_runs_every_feature_through_http_and_a_worker(stack: TestClient,
                                                                    admin_headers: dict[str, str]) -> None:
    h = admin_headers
    assert "toyres" in stack.get("/models/kinds", headers=h).json()["kinds"]
    upload_dataset(stack, h, n=160, n_test=60, d=16)
    bad = stack.post("/models", headers=h, json={"name": "toy", "dataset": "toy",
                                                 "architecture": {"kind": "toyres", "channels": 0}})
    assert bad.status_code == 422 and "channels" in bad.text  # the plugin's config_model, in the API
    created = stack.post("/models", headers=h, json={
        "name": "toy", "dataset": "toy", "architecture": {"kind": "toyres", "channels": 4},
        "recipe": {"epochs": 4, "batch_size": 32, "lr": 0.02, "checkpoints": 2},
        "policy": {"scorer": "gradnorm", "algorithm": "scrub", "params": {"epochs": 1}}})
    assert created.status_code == 201, created.text
    assert created.json()["architecture"] == {"kind": "toyres", "channels": 4, "side": 4}

    trained = wait_for(stack, h, stack.post("/models/toy/train", headers=h).json()["job_id"])
    assert trained["status"] == "completed", trained["error"]
    assert wait_for(stack, h, trained["result"]["score_job_id"])["status"] == "completed"
    for method in ("hessian", "less"):
        job = stack.post("/models/toy/versions/1/influence", headers=h, json={"method": method}).json()
        assert wait_for(stack, h, job["job_id"])["status"] == "completed"
    pages = {m: stack.get("/models/toy/versions/1/influence", headers=h, params={"method": m, "limit": 1000}
                          ).json() for m in ("gradnorm", "hessian", "less")}
    for method, page in pages.items():
        assert page["status"] == "completed" and page["total"] == 160, method
        policy = page["computed_by"]["norm_policy"]
        assert policy["batchnorm_layers"] == 2 and policy["applied"].startswith("eval"), method
        assert "frozen running statistics" in policy["plugin_states"]
    # K-FAC sees the plugin's tracked modules; the stem, the custom gate and BatchNorm are said to be left out
    untracked = set(pages["hessian"]["computed_by"]["untracked"])
    assert {"stem.weight", "stem.bias", "block.gate.scale", "block.bn1.weight"} <= untracked
    assert not untracked & {"block.conv1.weight", "block.conv2.weight", "head.weight"}

    ids = [i["point_id"] for i in pages["gradnorm"]["items"]]
    resp = stack.post("/forget", headers=h, json={"model": "toy", "point_ids": ids[-12:], "reason": "gdpr",
                                                  "requested_by": "dpo"})
    assert resp.status_code == 202, resp.text
    job = wait_for(stack, h, resp.json()["job_id"])
    assert job["status"] == "completed", job["error"]
    assert job["result"]["ref"] == "toy@2" and job["result"]["metrics"]["attempts"][0]["algorithm"] == "scrub"
    assert job["result"]["metrics"]["norm_policy"]["applied"].startswith("BatchNorm frozen")
    assert {"ua", "ra", "ta"} <= set(job["result"]["audit"]["after"])
    assert stack.get("/models/toy", headers=h).json()["current"] == 2

    current = _every_other_algorithm(stack, h, ids)
    _weights_round_trip(stack, h, current)


def _every_other_algorithm(stack: TestClient, h: dict[str, str], ids: list[str]) -> int:
    """Every other algorithm on the plugin model, each on points of its own, each a new version; the last one."""
    from workers.engine.params import PARAMS

    current = 2
    for k, algorithm in enumerate(sorted(set(PARAMS) - {"scrub"})):
        params = {"epochs": 1} if "epochs" in PARAMS[algorithm].model_fields else {}
        current = unlearn_as_next_version(stack, h, "toy", ids[-20 - 4 * k:-16 - 4 * k], algorithm, params, current)
    return current


def _weights_round_trip(stack: TestClient, h: dict[str, str], current: int) -> None:
    """The version's weights upload back as a version; renamed keys are refused by name."""
    from safetensors.numpy import load, save

    weights = stack.get(f"/models/toy/versions/{current}/weights", headers=h).content
    ok = stack.post("/models/toy/versions", headers=h, files={"weights": ("w.safetensors", weights)})
    assert ok.status_code == 201, ok.text
    tensors = load(weights)
    tensors["head.kernel"] = tensors.pop("head.weight")
    bad = stack.post("/models/toy/versions", headers=h, files={"weights": ("w.safetensors", save(tensors))})
    assert bad.status_code == 422
    assert "missing keys: head.weight" in bad.json()["detail"] and "unexpected keys: head.kernel" in bad.text
    assert stack.get("/ledger/verify", headers=h).json()["ok"]


def test_an_unknown_kind_is_422_naming_the_installed_ones(toy_plugin: str, sqlite_env: dict[str, str],
                                                         admin_headers: dict[str, str]) -> None:
    from app.main import create_app

    with TestClient(create_app()) as client:
        upload_dataset(client, admin_headers)
        resp = client.post("/models", headers=admin_headers, json={"name": "x", "dataset": "toy",
                                                                   "architecture": {"kind": "vit"}})
        reserved = client.post("/models", headers=admin_headers, json={"name": "kinds", "dataset": "toy",
                                                                       "architecture": {"kind": "mlp"}})
    assert resp.status_code == 422
    assert "unknown architecture kind 'vit'" in resp.text and "resnet" in resp.text and "toyres" in resp.text
    assert reserved.status_code == 422 and "reserved" in reserved.text


def test_the_api_validates_plugin_kinds_and_limits_without_importing_torch(toy_plugin: str) -> None:
    """What the API does with kinds (list, validate configs, measure size limits) imports no torch."""
    code = """if True:
        import sys
        from app.main import create_app
        from app.registry.schemas import Architecture
        from workers.engine import plugins
        from workers.engine.kinds import RESNET
        create_app()
        assert Architecture(kind="toyres", channels=8).model_dump()["side"] == 4
        assert Architecture.model_validate({"kind": "resnet", "width": 16}).model_dump()["blocks"] == [2, 2, 2, 2]
        assert RESNET.parameter_count({}, input_shape=[3, 32, 32], n_classes=10) == 11_173_962
        assert "toyres" in plugins.installed_kinds()
        assert "torch" not in sys.modules, "the API imported torch"
    """
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_deployment_limits_apply_to_the_resnet_kind(sqlite_env: dict[str, str], admin_headers: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from app.main import create_app
    from tests.conftest import _reset_caches

    monkeypatch.setenv("LETHE_MAX_MODEL_PARAMS", "1000000")
    monkeypatch.setenv("LETHE_MAX_LAYER_WIDTH", "1024")
    _reset_caches()
    with TestClient(create_app()) as client:
        upload_dataset(client, admin_headers, d=16)

        def create(name: str, **arch: object) -> object:
            return client.post("/models", headers=admin_headers, json={"name": name, "dataset": "toy",
                                                                       "architecture": {"kind": "resnet", **arch}})

        big = create("r18")  # ResNet-18: ~11 M parameters
        assert big.status_code == 422 and "LETHE_MAX_MODEL_PARAMS" in big.text
        wide = create("wide", width=128, blocks=[1, 1, 1, 1, 1])  # last stage 2048 channels
        assert wide.status_code == 422 and "LETHE_MAX_LAYER_WIDTH" in wide.text
        assert create("small", width=8, blocks=[1, 1]).status_code == 201
