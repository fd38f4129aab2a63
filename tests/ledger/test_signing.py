"""Issue 14 item 5: chain heads signed with an Ed25519 key, checked with nothing but the public key.

An insider who rewrites the ledger and recomputes every hash passes GET /ledger/verify; the signed checkpoints
clients kept (POST /forget answers, certificates, /ledger/checkpoints pages) expose the fork or truncation."""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi.testclient import TestClient

from tests.factories import create_model, drain, upload_dataset, upload_version
from tests.ledger.test_integrity import _rewrite_from, tamper

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy(client: TestClient, admin_headers: dict[str, str]) -> TestClient:
    upload_dataset(client, admin_headers)
    create_model(client, admin_headers)
    assert upload_version(client, admin_headers).status_code == 201
    return client


def forget(client: TestClient, headers: dict[str, str], points: list[str], **kw: str) -> dict:
    r = client.post("/forget", headers=headers, json={"model": "toy", "point_ids": points, "reason": "gdpr",
                                                      "requested_by": "dpo"} | kw)
    assert r.status_code in (200, 202), r.text
    return r.json()


def signed_ok(public_pem: bytes, cp: dict) -> bool:
    """The documented check, with cryptography alone (no Lethe code, no Lethe secret)."""
    key = load_pem_public_key(public_pem)
    assert isinstance(key, Ed25519PublicKey)
    msg = f"lethe-checkpoint/v1:{cp['tenant_id']}:{cp['seq']}:{cp['head']}:{cp['signed_at']}".encode()
    try:
        key.verify(base64.b64decode(cp["signature"]), msg)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_heads_are_signed_and_checkpoints_listed(toy: TestClient, admin_headers: dict[str, str],
                                                 lethe_env: dict[str, str]) -> None:
    h = admin_headers
    pem = toy.get("/ledger/public-key")  # public: no key needed
    assert pem.status_code == 200 and pem.text.startswith("-----BEGIN PUBLIC KEY-----")
    head = toy.get("/ledger/head", headers=h).json()
    cp = head["checkpoint"]
    assert (cp["seq"], cp["head"]) == (head["seq"], head["hash"]) and cp["alg"] == "Ed25519"
    assert signed_ok(pem.content, cp)
    assert not signed_ok(pem.content, cp | {"head": "f" * 64})
    listed = toy.get("/ledger/checkpoints", headers=h).json()
    assert listed["items"][-1] == cp and listed["total"] == len(listed["items"])
    assert {"seq", "head", "signed_at", "signature"} <= set(listed["items"][0])
    # asking again at the same head signs nothing new; a moved head is signed when asked for
    assert toy.get("/ledger/head", headers=h).json()["checkpoint"] == cp
    assert toy.get("/ledger/checkpoints", headers=h).json()["total"] == listed["total"]
    toy.post("/models/toy/train", headers=h)
    moved = toy.get("/ledger/checkpoints", headers=h).json()
    assert moved["total"] == listed["total"] + 1 and moved["items"][-1]["seq"] > cp["seq"]
    entries = {e["seq"]: e["hash"] for e in toy.get("/ledger?limit=1000", headers=h).json()["items"]}
    assert all(entries[c["seq"]] == c["head"] and signed_ok(pem.content, c) for c in moved["items"])
    # the signing key was generated 0600 in a 0700 directory under the data dir
    key_file = Path(lethe_env["LETHE_DATA_DIR"]) / "ledger" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    # another tenant gets its own chain's checkpoints
    other = toy.post("/keys", headers=h, json={"scopes": ["read"], "tenant": "elsewhere"}).json()["key"]
    theirs = toy.get("/ledger/checkpoints", headers={"Authorization": f"Bearer {other}"}).json()["items"]
    assert [(c["seq"], c["tenant_id"] != cp["tenant_id"]) for c in theirs] == [(0, True)]


def test_forget_answers_and_closings_carry_signed_checkpoints(toy: TestClient,
                                                              admin_headers: dict[str, str]) -> None:
    h = admin_headers
    pem = toy.get("/ledger/public-key").content
    answer = forget(toy, h | {"Idempotency-Key": "k1"}, ["p0001", "p0002"])
    cp = answer["checkpoint"]
    ledger = toy.get("/ledger?limit=1000", headers=h).json()["items"]
    # the answer's checkpoint is the head its own transaction committed: it covers the request's entries
    assert cp["seq"] == ledger[-1]["seq"] and cp["head"] == ledger[-1]["hash"] and signed_ok(pem, cp)
    mine = [e["seq"] for e in ledger if e["subject_id"] == answer["request_id"]]
    assert mine and max(mine) <= cp["seq"]
    replay = toy.post("/forget", headers=h | {"Idempotency-Key": "k1"},
                      json={"model": "toy", "point_ids": ["p0001", "p0002"], "reason": "gdpr", "requested_by": "dpo"})
    assert replay.json()["checkpoint"] == cp
    # cancelling closes the request: that transaction commits a checkpoint of its head, unasked
    assert toy.post(f"/requests/{answer['request_id']}/cancel", headers=h).status_code == 200
    toy.post("/models/toy/train", headers=h)  # moves the head on, so the listing below does not sign it
    ledger = toy.get("/ledger?limit=1000", headers=h).json()["items"]
    closed = max(e["seq"] for e in ledger if e["event"] == "request.cancelled")
    queued = min(e["seq"] for e in ledger if e["event"] == "job.queued" and e["seq"] > closed)
    cps = {c["seq"]: c for c in toy.get("/ledger/checkpoints", headers=h).json()["items"]}
    assert [s for s in cps if closed <= s < queued] and all(signed_ok(pem, c) for c in cps.values())
    # a job that completes does too (the training job: job.completed and the versions it registered)
    drain()
    ledger = toy.get("/ledger?limit=1000", headers=h).json()["items"]
    done = max(e["seq"] for e in ledger if e["event"] == "job.completed")
    mid = forget(toy, h, ["p0003"])  # moves the head on again
    cps = {c["seq"] for c in toy.get("/ledger/checkpoints", headers=h).json()["items"]}
    assert any(done <= s < mid["checkpoint"]["seq"] for s in cps), (done, sorted(cps))
    # the certificate is signed with Ed25519 (no HMAC) and carries the latest checkpoint
    cert = toy.get(f"/requests/{answer['request_id']}/certificate", headers=h).json()
    assert cert["signature"]["alg"] == "Ed25519" and signed_ok(pem, cert["checkpoint"])
    signed = json.dumps({k: v for k, v in cert.items() if k != "signature"}, sort_keys=True,
                        separators=(",", ":")).encode()
    key = load_pem_public_key(pem)
    key.verify(base64.b64decode(cert["signature"]["value"]), signed)
    with pytest.raises(InvalidSignature):
        forged = json.dumps({k: v for k, v in cert.items() if k != "signature"} | {"status": "completed"},
                            sort_keys=True, separators=(",", ":")).encode()
        key.verify(base64.b64decode(cert["signature"]["value"]), forged)


def _cli(client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str):  # noqa: ANN202
    from typer.testing import CliRunner

    from app import cli
    from app.cli import output
    from app.client import Lethe

    client.headers.update(headers)
    monkeypatch.setattr(output, "client", lambda url, key: Lethe.over(client))
    monkeypatch.setattr(client, "close", lambda: None)  # the CLI closes its client; the test keeps using it
    return CliRunner().invoke(cli.cli, ["ledger", "verify", *args], env={"COLUMNS": "250"})


def test_cli_verify_against_kept_checkpoints_finds_a_rewrite(toy: TestClient, admin_headers: dict[str, str],
                                                             lethe_env: dict[str, str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = admin_headers
    kept = [forget(toy, h, ["p0001"]), forget(toy, h, ["p0002"])]  # two answers a client kept
    assert toy.post(f"/requests/{kept[0]['request_id']}/cancel", headers=h).status_code == 200
    kept.append(toy.get(f"/requests/{kept[0]['request_id']}/certificate", headers=h).json())  # and a certificate
    (tmp_path / "kept.json").write_text(json.dumps(kept))
    (tmp_path / "altered.json").write_text(json.dumps([kept[2] | {"status": "completed"}]))
    altered = _cli(toy, h, monkeypatch, "--against", str(tmp_path / "altered.json"))
    assert altered.exit_code == 8 and "certificate of request" in altered.output, altered.output
    exported = toy.get("/ledger?limit=1000", headers=h).json()
    ok = _cli(toy, h, monkeypatch, "--against", str(tmp_path / "kept.json"))
    assert ok.exit_code == 0 and "ok" in ok.output, ok.output
    # an insider rewrites entry 2 and recomputes every later hash: the server's own verify passes ...
    _rewrite_from(lethe_env["backend"], seq=2, forge=lambda d: {**d, "forged": True})
    assert toy.get("/ledger/verify", headers=h).json()["ok"]
    # ... but not the client's copy: a fork, somewhere up to the first kept head
    bad = _cli(toy, h, monkeypatch, "--against", str(tmp_path / "kept.json"), "--json")
    report = json.loads(bad.stdout)
    first = min([kept[0]["checkpoint"]["seq"]] + [e["seq"] for e in kept[2]["ledger"]])  # lowest kept seq
    assert bad.exit_code == 8 and report["problem"]["kind"] == "fork"
    assert report["problem"]["between"] == [1, first] and report["problem"]["first_differing"] is None
    # with entry hashes kept too (certificates, a /ledger export), the first differing entry is exact
    (tmp_path / "kept2.json").write_text(json.dumps(kept + [exported]))
    exact = _cli(toy, h, monkeypatch, "--against", str(tmp_path / "kept2.json"))
    assert exact.exit_code == 8 and "FORK" in exact.output and "first differing entry: seq 2" in exact.output


def test_cli_verify_reports_truncation(toy: TestClient, admin_headers: dict[str, str], lethe_env: dict[str, str],
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = admin_headers
    before = toy.get("/ledger/head", headers=h).json()
    kept = forget(toy, h, ["p0001"])
    (tmp_path / "kept.json").write_text(json.dumps([before, kept]))
    # the insider deletes the newest entries (the request's), and the server's verify is still ok
    tamper(lethe_env["backend"], "DELETE FROM ledger_entries WHERE seq > :s", s=before["seq"])
    assert toy.get("/ledger/verify", headers=h).json()["ok"]
    out = _cli(toy, h, monkeypatch, "--against", str(tmp_path / "kept.json"))
    assert out.exit_code == 8 and "TRUNCATION" in out.output, out.output
    assert f"the chain ends at seq {before['seq']}" in out.output and f"has seq {kept['checkpoint']['seq']}" in \
        out.output
    report = json.loads(_cli(toy, h, monkeypatch, "--against", str(tmp_path / "kept.json"), "--json").stdout)
    assert report["problem"]["first_differing"] == before["seq"] + 1
    # offline, from an export and the auditor's copy of the public key: the server is never asked
    (tmp_path / "ledger.json").write_text(toy.get("/ledger?limit=1000", headers=h).text)
    (tmp_path / "key.pem").write_text(toy.get("/ledger/public-key").text)
    from app import cli
    from app.cli import output

    monkeypatch.setattr(output, "client", lambda url, key: pytest.fail("offline mode asked the server"))
    from typer.testing import CliRunner

    offline = CliRunner().invoke(cli.cli, ["ledger", "verify", "--against", str(tmp_path / "kept.json"), "--entries",
                                           str(tmp_path / "ledger.json"), "--public-key", str(tmp_path / "key.pem")],
                                 env={"COLUMNS": "250"})
    assert offline.exit_code == 8 and "TRUNCATION" in offline.output, offline.output
    # a checkpoint whose signature is not the server's is reported, whatever it claims
    forged = kept["checkpoint"] | {"seq": 1}
    (tmp_path / "forged.json").write_text(json.dumps([forged]))
    out = _cli(toy, h, monkeypatch, "--against", str(tmp_path / "forged.json"))
    assert out.exit_code == 8 and "bad signature" in out.output


def _readme_block(marker: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert m, f"README block {marker} not found"
    return m.group(1)


def test_readme_offline_audit_needs_only_the_public_key(toy: TestClient, admin_headers: dict[str, str],
                                                        lethe_env: dict[str, str], tmp_path: Path) -> None:
    """The README's auditor snippet, run as written in a clean directory with no Lethe settings or secret."""
    h = admin_headers
    answer = forget(toy, h, ["p0001", "p0002"])
    assert toy.post(f"/requests/{answer['request_id']}/cancel", headers=h).status_code == 200
    (tmp_path / "lethe-ledger.pub.pem").write_text(toy.get("/ledger/public-key").text)
    (tmp_path / "checkpoints.json").write_text(toy.get("/ledger/checkpoints", headers=h).text)
    (tmp_path / "ledger.json").write_text(toy.get("/ledger?limit=1000", headers=h).text)
    (tmp_path / "certificate.json").write_text(
        toy.get(f"/requests/{answer['request_id']}/certificate", headers=h).text)
    (tmp_path / "verify_lethe.py").write_text(_readme_block("auditor-python", "python"))
    clean_env = {"PATH": "/usr/bin:/bin"}  # no LETHE_*: nothing of the server's configuration

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "verify_lethe.py"], cwd=tmp_path, env=clean_env,
                              capture_output=True, text=True, timeout=60)

    good = run()
    assert good.returncode == 0 and good.stdout.startswith("OK"), good.stdout + good.stderr
    # the openssl recipe for one checkpoint
    cp = json.loads((tmp_path / "checkpoints.json").read_text())["items"][-1]
    (tmp_path / "head.json").write_text(json.dumps({"checkpoint": cp}))
    shell = _readme_block("auditor-openssl", "bash")
    sh = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=clean_env, capture_output=True, text=True,
                        timeout=60)
    assert "Signature Verified Successfully" in sh.stdout, sh.stdout + sh.stderr
    # an insider's rewrite with recomputed hashes: the exported chain no longer reaches the kept checkpoints
    _rewrite_from(lethe_env["backend"], seq=2, forge=lambda d: {**d, "forged": True})
    (tmp_path / "ledger.json").write_text(toy.get("/ledger?limit=1000", headers=h).text)
    bad = run()
    assert bad.returncode != 0 and "FORK" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    # an edited certificate fails its signature
    _rewrite_from(lethe_env["backend"], seq=2, forge=lambda d: {k: v for k, v in d.items() if k != "forged"})
    (tmp_path / "ledger.json").write_text(toy.get("/ledger?limit=1000", headers=h).text)
    assert run().returncode == 0
    cert = json.loads((tmp_path / "certificate.json").read_text())
    (tmp_path / "certificate.json").write_text(json.dumps(cert | {"status": "completed"}))
    edited = run()
    assert edited.returncode != 0 and "certificate" in edited.stdout + edited.stderr
