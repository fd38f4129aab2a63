"""Concurrent weight uploads to one model (issue 14.7): each version's file is the bytes that were uploaded for it;
no upload overwrites another's file, and neither answers 5xx. Two API processes are two event loops: here two
request portals, with both uploads held right after they chose a version number (the race's window)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.factories import create_model, safetensors_bytes, upload_dataset


@pytest.fixture
def app(lethe_env: dict[str, str]) -> Iterator[Any]:
    application = create_app()
    with TestClient(application):  # lifespan: the bootstrap key
        yield application


def weights(seed: int) -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    return save({"net.0.weight": rng.normal(size=(16, 8)).astype(np.float32), "net.0.bias": np.zeros(16, np.float32),
                 "net.2.weight": rng.normal(size=(3, 16)).astype(np.float32), "net.2.bias": np.zeros(3, np.float32)})


def test_concurrent_uploads_never_overwrite_each_others_weights(app: Any, admin_headers: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from app.registry import service

    h = admin_headers
    setup = TestClient(app)
    upload_dataset(setup, h)
    create_model(setup, h)
    assert setup.post("/models/toy/versions", headers=h, files={"weights": ("w", safetensors_bytes())}
                      ).status_code == 201

    barrier = threading.Barrier(2)
    real = service.next_number

    first = threading.local()

    def held(session: Any, *, model: Any) -> int:
        number = real(session, model=model)
        if getattr(first, "done", False):
            return number
        first.done = True
        try:  # both uploads have chosen their number before either goes on (when nothing serialises them) ...
            if barrier.wait(timeout=3) == 0:
                time.sleep(0.5)  # ... and the later one writes its file after the first has registered
        except threading.BrokenBarrierError:
            pass
        return number

    monkeypatch.setattr(service, "next_number", held)
    bodies = {seed: weights(seed) for seed in (1, 2)}
    answers: dict[int, Any] = {}

    def upload(seed: int) -> None:
        client = TestClient(app, raise_server_exceptions=False)  # its own portal: a request of its own loop
        answers[seed] = client.post("/models/toy/versions", headers=h, params={"promote": "false"},
                                    files={"weights": ("w", bodies[seed])})

    threads = [threading.Thread(target=upload, args=(seed,)) for seed in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # every registered version serves exactly the bytes uploaded for it
    versions = setup.get("/models/toy/versions", headers=h).json()["items"]
    uploaded = {hashlib.sha256(b).hexdigest() for b in bodies.values()}
    for v in versions:
        served = setup.get(f"/models/toy/versions/{v['version']}/weights", headers=h)
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == v["sha256"], f"toy@{v['version']} serves other bytes"
    # a lost race is a clean 409 (nothing recorded), never a 5xx; what was answered 201 is registered
    statuses = sorted(r.status_code for r in answers.values())
    assert all(s in (201, 409) for s in statuses) and 201 in statuses, [r.text for r in answers.values()]
    assert {v["sha256"] for v in versions} & uploaded == {
        hashlib.sha256(bodies[s]).hexdigest() for s in bodies if answers[s].status_code == 201}


def test_only_strictly_matching_safetensors_are_accepted_and_refusals_say_why(app: Any,
                                                                            admin_headers: dict[str, str]) -> None:
    """Weights load strictly: pickles and zip archives (.pt/.bin, TorchScript, .pt2) are refused with the reason,
    and a safetensors file with missing or unexpected keys or wrong shapes is a 422 naming them; nothing is
    recorded for any of them."""
    import io
    import pickle
    import zipfile

    from safetensors.numpy import load, save

    h = admin_headers
    client = TestClient(app)
    upload_dataset(client, h)
    create_model(client, h)  # mlp hidden [16] on 8 features, 3 classes: net.0 and net.2

    def post(body: bytes, filename: str = "w.safetensors") -> Any:
        return client.post("/models/toy/versions", headers=h, files={"weights": (filename, body)})

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:  # the layout of torch.save, TorchScript and torch.export archives
        z.writestr("archive/data.pkl", pickle.dumps({"net.0.weight": [0.0]}))
    pt2 = post(archive.getvalue(), "model.pt2")
    assert pt2.status_code == 422 and ".pt2" in pt2.json()["detail"] and "execute" in pt2.json()["detail"]
    legacy = post(pickle.dumps({"net.0.weight": [0.0]}, protocol=2), "pytorch_model.bin")
    assert legacy.status_code == 422 and "pickle" in legacy.json()["detail"]

    good = load(safetensors_bytes())
    renamed = {("head.weight" if k == "net.2.weight" else k): v for k, v in good.items()}
    wrong_keys = post(save(renamed))
    detail = wrong_keys.json()["detail"]
    assert wrong_keys.status_code == 422
    assert "missing keys: net.2.weight" in detail and "unexpected keys: head.weight" in detail, detail
    wrong_shape = post(safetensors_bytes(hidden=12))
    assert wrong_shape.status_code == 422 and "net.0.weight [12, 8] (expected [16, 8])" in wrong_shape.json()["detail"]

    assert client.get("/models/toy/versions", headers=h).json()["items"] == []  # nothing recorded
    assert post(safetensors_bytes()).status_code == 201
