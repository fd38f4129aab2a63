"""Bad input at the door: body and upload limits (413), npz and safetensors header bombs (422 before anything is
allocated from them), and the per-key rate limit (429 + Retry-After). Nothing is recorded for any of them."""

from __future__ import annotations

import io
import json
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import artifacts
from app.settings import get_settings
from tests.factories import create_model, npz_bytes, safetensors_bytes, upload_dataset, upload_version
from tests.support import assert_problem

MiB = 1024 * 1024


@pytest.fixture
def client_settings() -> dict[str, str]:
    return {
        "LETHE_MAX_BODY_MB": "1",
        "LETHE_MAX_UPLOAD_MB": "2"
    }


def nothing_recorded(client: TestClient, h: dict[str, str], *, datasets: int = 0, versions: int = 0) -> None:
    assert client.get("/datasets", headers=h).json()["total"] == datasets
    if versions is not None and client.get("/models/toy", headers=h).status_code == 200:
        assert len(client.get("/models/toy", headers=h).json()["versions"]) == versions
    leftovers = [p for p in artifacts.root().rglob("*") if p.is_file() and ("upload-" in p.name or
                                                                            p.name.endswith(".tmp"))]
    assert not leftovers, leftovers


# --- 413 ------------------------------------------------------------------------------------------------------

def test_json_body_over_the_limit_is_413(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    body = {"model": "toy", "point_ids": [f"p{i:07d}" for i in range(150_000)], "reason": "r", "requested_by": "x"}
    assert len(json.dumps(body, separators=(",", ":"))) > MiB
    r = client.post("/forget", headers=h, json=body)
    assert_problem(r, 413, kind="too-large", detail="LETHE_MAX_BODY_MB")
    # streamed without Content-Length (chunked): cut off while reading, still a clean 413
    raw = json.dumps(body).encode()
    chunks = (raw[i:i + 65536] for i in range(0, len(raw), 65536))
    r = client.post("/forget", headers=h | {"content-type": "application/json"}, content=chunks)
    assert_problem(r, 413, kind="too-large")
    # the limit is checked before authentication: a huge body is never read, whoever sends it
    assert client.post("/forget", json=body).status_code == 413
    # small bodies pass
    assert client.post("/forget", headers=h, json={"model": "toy", "point_ids": ["a"], "reason": "r",
                                                  "requested_by": "x"}).status_code == 404
    assert client.get("/ledger", headers=h).json()["total"] == 0
    assert client.get("/requests", headers=h).json()["total"] == 0


def test_upload_over_the_limit_is_413(client: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    blob = np.random.default_rng(0).random((3 * MiB // 8,))  # 3 MiB of incompressible floats
    big = npz_bytes(n=10, n_test=0, blob=blob)
    # over limit + form slack by Content-Length: refused before reading
    r = client.post("/datasets", headers=h, data={"name": "big"}, files={"file": ("d.npz", big)})
    assert_problem(r, 413, kind="too-large", detail="LETHE_MAX_UPLOAD_MB")
    # within the form slack but the file itself is over the limit: refused while storing
    mid = npz_bytes(n=10, n_test=0, blob=blob[: int(2.5 * MiB) // 8])
    assert 2 * MiB < len(mid) < 3 * MiB
    r = client.post("/datasets", headers=h, data={"name": "mid"}, files={"file": ("d.npz", mid)})
    assert_problem(r, 413, kind="too-large")
    # weights too
    upload_dataset(client, h)
    create_model(client, h)
    r = upload_version(client, h, data=b"\0" * (3 * MiB))
    assert r.status_code == 413
    nothing_recorded(client, h, datasets=1, versions=0)


# --- npz bombs ------------------------------------------------------------------------------------------------

def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def npz_with(members: dict[str, bytes], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def valid_members() -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(npz_bytes(n=20, n_test=0, subjects=False))) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def post_npz(client: TestClient, h: dict[str, str], data: bytes, name: str = "bomb") -> object:
    return client.post("/datasets", headers=h, data={"name": name}, files={"file": ("d.npz", data)})


def test_npz_member_declaring_a_huge_shape_is_refused_before_allocation(client: TestClient,
                                                                       admin_headers: dict[str, str]) -> None:
    h = admin_headers
    members = valid_members()
    # x claims 10^12 x 8 float32 (32 TB) but holds 64 bytes: numpy would allocate the declared size first
    members["x.npy"] = npy_header((10**12, 8)) + b"\0" * 64
    r = post_npz(client, h, npz_with(members))
    assert r.status_code == 422, r.text
    assert "x.npy" in r.json()["detail"] and "declares shape" in r.json()["detail"]
    # the opposite lie: a small shape over more bytes than it needs
    members["x.npy"] = npy_header((2, 2)) + b"\0" * 4096
    assert post_npz(client, h, npz_with(members)).status_code == 422
    # a member that is not an .npy array at all (np.load would hand back raw bytes)
    members = valid_members() | {"notes": b"hello"}
    r = post_npz(client, h, npz_with(members))
    assert r.status_code == 422 and "notes" in r.json()["detail"]
    # a header that is not a dict literal / a negative dimension / an absurd header length
    for bad in (b"\x93NUMPY\x01\x00" + struct.pack("<H", 10) + b"__import__", npy_header((-1, 8)),
                b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{}"):
        r = post_npz(client, h, npz_with(valid_members() | {"x.npy": bad}))
        assert r.status_code == 422, r.text
    nothing_recorded(client, h)


def _zip_bomb(expanded_mib: int) -> bytes:
    """An npz whose x is `expanded_mib` MiB of zeros, deflated (about 1000x), written without holding it."""
    rows = expanded_mib * MiB // 32
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in valid_members().items():
            if name != "x.npy":
                zf.writestr(name, data)
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            fh.write(npy_header((rows, 8)))
            zero = b"\0" * MiB
            for _ in range(expanded_mib):
                fh.write(zero)
    return buf.getvalue()


def test_zip_bomb_and_expanded_size_limits(client: TestClient, admin_headers: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    h = admin_headers
    bomb = _zip_bomb(100)
    assert len(bomb) < MiB // 4  # 100 MiB of zeros in a small upload
    r = post_npz(client, h, bomb)
    assert r.status_code == 422 and "zip bomb" in r.json()["detail"], r.text
    # the expanded-size ceiling applies whatever the ratio
    monkeypatch.setenv("LETHE_MAX_NPZ_EXPANDED_MB", "1")
    get_settings.cache_clear()
    big = npz_bytes(n=10, n_test=0, blob=np.random.default_rng(1).random(3 * MiB // 16))  # 1.5 MiB
    r = post_npz(client, h, big)
    assert r.status_code == 422 and "LETHE_MAX_NPZ_EXPANDED_MB" in r.json()["detail"]
    # and to datasets registered by reference, which never pass through a body limit
    tenant_id = client.get("/keys", headers=h).json()["items"][0]["tenant_id"]
    path = get_settings().imports / tenant_id / "bomb.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(bomb)
    r = client.post("/datasets", headers=h, json={"name": "ref-bomb", "uri": "bomb.npz"})
    assert r.status_code == 422
    nothing_recorded(client, h)


def test_a_sound_compressed_npz_still_loads(client: TestClient, admin_headers: dict[str, str]) -> None:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez_compressed(buf, x=rng.normal(size=(50, 4)).astype(np.float32), y=rng.integers(0, 2, 50),
                        ids=np.array([f"q{i}" for i in range(50)]))
    r = post_npz(client, admin_headers, buf.getvalue(), name="fine")
    assert r.status_code == 201 and r.json()["n_points"] == 50


# --- safetensors bombs ----------------------------------------------------------------------------------------

def safetensors_raw(header: dict | bytes, data: bytes = b"", declared_len: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if declared_len is None else declared_len) + text + data


@pytest.mark.parametrize("case", ["huge_header_len", "header_past_eof", "huge_shape", "offsets_past_eof",
                                  "not_json", "not_an_object", "malformed_entry", "truncated"])
def test_safetensors_header_bombs_are_422(client: TestClient, admin_headers: dict[str, str], case: str) -> None:
    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    body = {
        "huge_header_len": safetensors_raw({}, declared_len=2**62),
        "header_past_eof": safetensors_raw(b'{"a": 1}', declared_len=4096),
        "huge_shape": safetensors_raw({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}},
                                      b"\0" * 16),
        "offsets_past_eof": safetensors_raw({"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}},
                                            b"\0" * 16),
        "not_json": safetensors_raw(b"\xff\xfe not json"),
        "not_an_object": safetensors_raw(b"[1, 2, 3]"),
        "malformed_entry": safetensors_raw({"w": {"dtype": "F32", "shape": "big", "data_offsets": [0, 4]}},
                                           b"\0" * 4),
        "truncated": b"\x10\x00",
    }[case]
    r = upload_version(client, h, data=body)
    assert_problem(r, 422, kind="unprocessable")
    assert upload_version(client, h, data=safetensors_bytes()).status_code == 201  # a sound file passes
    nothing_recorded(client, h, datasets=1, versions=1)


# --- 429 ------------------------------------------------------------------------------------------------------

def test_rate_limit_per_key_with_retry_after(client: TestClient, admin_headers: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = admin_headers
    first = {"Authorization": "Bearer " + client.post("/keys", headers=h, json={"scopes": ["read"]}).json()["key"]}
    second = {"Authorization": "Bearer " + client.post("/keys", headers=h, json={"scopes": ["read"]}).json()["key"]}
    monkeypatch.setenv("LETHE_RATE_LIMIT_PER_SECOND", "2")
    monkeypatch.setenv("LETHE_RATE_LIMIT_BURST", "5")
    get_settings.cache_clear()
    codes = [client.get("/datasets", headers=first).status_code for _ in range(5)]
    assert codes == [200] * 5
    limited = client.get("/datasets", headers=first)
    assert_problem(limited, 429, kind="rate-limited", detail="rate limit of this API key exceeded")
    assert int(limited.headers["retry-after"]) >= 1
    # per key: another key of the same tenant is unaffected; no key at all is still 401 (not counted)
    assert client.get("/datasets", headers=second).status_code == 200
    assert client.get("/datasets").status_code == 401
    # the bucket refills at the configured rate
    time.sleep(float(limited.headers["retry-after"]))
    assert client.get("/datasets", headers=first).status_code == 200


def test_default_rate_limit_is_generous(client: TestClient, admin_headers: dict[str, str]) -> None:
    settings = get_settings()
    assert settings.rate_limit_burst >= 1000 and settings.rate_limit_per_second >= 100
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))


def test_zlib_is_what_makes_the_bomb_small() -> None:
    # guard for the bomb fixture: deflate really compresses zeros ~1000x, so the 100 MiB case is a ratio test
    assert len(zlib.compress(b"\0" * MiB)) < 2 * 1024
