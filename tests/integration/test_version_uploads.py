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
