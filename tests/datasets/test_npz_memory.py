"""npz memory amplification: the API judges x and x_test from their .npy headers alone (workers load them), and a
small archive expanding far beyond what real features compress to is refused at the default settings."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.settings import get_settings
from tests.factories import create_model, peak_allocated

MiB = 1024 * 1024


def zeros_npz(rows: int, width: int, random_mib: int = 0) -> bytes:
    """An npz with x of rows x width float32 (zeros after `random_mib` MiB of noise), deflated, written without
    holding x in memory; y, ids and x_test/y_test consistent with it."""
    small = io.BytesIO()
    np.savez(small, y=np.arange(rows) % 3, ids=np.array([f"p{i:06d}" for i in range(rows)]),
             x_test=np.zeros((4, width), np.float32), y_test=np.arange(4) % 3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zipfile.ZipFile(io.BytesIO(small.getvalue())) as s:
        for name in s.namelist():
            zf.writestr(name, s.read(name))
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (rows, width)})
            fh.write(header.getvalue())
            left = rows * width * 4
            noise = np.random.default_rng(0).bytes(random_mib * MiB)
            fh.write(noise)
            left -= len(noise)
            zero = b"\0" * MiB
            while left > 0:
                fh.write(zero[:left])
                left -= MiB
    return buf.getvalue()


def test_the_api_never_loads_the_features(client: TestClient, admin_headers: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_MAX_NPZ_RATIO", "100000")  # a sound, very compressible dataset: allowed here
    get_settings.cache_clear()
    data = zeros_npz(rows=2048, width=16384)  # x: 128 MiB of float32
    assert len(data) < 2 * MiB
    r, peak = peak_allocated(lambda: client.post("/datasets", headers=admin_headers, data={"name": "big"},
                                                 files={"file": ("d.npz", data)}))
    assert r.status_code == 201, r.text
    assert r.json()["n_points"] == 2048 and r.json()["input_shape"] == [16384] and r.json()["n_test"] == 4
    assert peak < 32 * MiB, f"registering allocated {peak / MiB:.0f} MiB for a 128 MiB x"
    create_model(client, admin_headers, dataset="big")  # the header-only summary is all a model needs


def test_a_small_archive_expanding_far_is_refused_by_default(client: TestClient,
                                                             admin_headers: dict[str, str]) -> None:
    data = zeros_npz(rows=1024, width=16384, random_mib=1)  # 1 MiB of noise + 63 MiB of zeros: ~60x
    assert len(data) < 2 * MiB
    r = client.post("/datasets", headers=admin_headers, data={"name": "bomb"}, files={"file": ("d.npz", data)})
    assert r.status_code == 422 and "LETHE_MAX_NPZ_RATIO" in r.json()["detail"], r.text
    assert client.get("/datasets", headers=admin_headers).json()["total"] == 0


def test_labels_and_ids_of_the_wrong_kind_are_still_422(client: TestClient, admin_headers: dict[str, str]) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "long ids": {"x": rng.normal(size=(3, 2)), "y": np.arange(3), "ids": np.array(["a" * 300, "b", "c"])},
        "x not numeric": {"x": np.array([["a", "b"]] * 3), "y": np.arange(3), "ids": np.array(["a", "b", "c"])},
        "x 1-D": {"x": np.zeros(3), "y": np.arange(3), "ids": np.array(["a", "b", "c"])},
        "x_test shape": {"x": np.zeros((3, 2)), "y": np.arange(3), "ids": np.array(["a", "b", "c"]),
                         "x_test": np.zeros((2, 5)), "y_test": np.arange(2)},
    }
    for what, arrays in cases.items():
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        r = client.post("/datasets", headers=admin_headers, data={"name": "bad"},
                        files={"file": ("d.npz", buf.getvalue())})
        assert r.status_code == 422, (what, r.text)
