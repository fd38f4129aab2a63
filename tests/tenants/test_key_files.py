"""Issue 14 item 6 (in part) and item 1's constraint: generated key files are readable by the service alone, and
the identity-hash key is the server secret exactly as before (stored keyed hashes stay valid)."""

from __future__ import annotations

import hashlib
import hmac
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import _reset_caches
from tests.factories import create_model, upload_dataset, upload_version


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("existing", [False, True])
def test_generated_secret_key_is_0600_in_a_0700_data_dir(lethe_env: dict[str, str], admin_headers: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch, existing: bool) -> None:
    monkeypatch.delenv("LETHE_SECRET_KEY")  # the embedded default: generated under the data dir
    _reset_caches()
    data_dir = Path(lethe_env["LETHE_DATA_DIR"])
    key_file = data_dir / "secret.key"
    if existing:  # both written group/world-readable by an older version: tightened, the key's value kept
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o755)
        key_file.write_text("old-secret")
        key_file.chmod(0o644)
    with TestClient(create_app()) as client:
        upload_dataset(client, admin_headers)  # subjects are stored as keyed hashes: the secret is needed
        create_model(client, admin_headers)
        assert upload_version(client, admin_headers).status_code == 201
        r = client.post("/forget", headers=admin_headers, json={"model": "toy", "subject_ids": ["s001"],
                                                                "reason": "r", "requested_by": "dpo"})
        assert r.status_code == 202 and r.json()["pending"], r.text
    assert key_file.exists() and mode(key_file) == 0o600
    assert mode(data_dir) == 0o700  # the embedded database and every key file inside
    if existing:
        assert key_file.read_text() == "old-secret"


def test_identity_hashes_keep_their_key(lethe_env: dict[str, str], admin_headers: dict[str, str]) -> None:
    """keyed_hash is still HMAC-SHA256(LETHE_SECRET_KEY, value): hashes stored before the key separation match."""
    with TestClient(create_app()) as client:
        upload_dataset(client, admin_headers)
        create_model(client, admin_headers)
        upload_version(client, admin_headers)
        client.post("/forget", headers=admin_headers, json={"model": "toy", "subject_ids": ["s002"], "reason": "r",
                                                            "requested_by": "dpo@example.org"})
        entry = next(e for e in client.get("/ledger", headers=admin_headers).json()["items"]
                     if e["event"] == "request.received")
    want = hmac.new(b"test-secret", b"dpo@example.org", hashlib.sha256).hexdigest()
    assert entry["data"]["requested_by"] == want
