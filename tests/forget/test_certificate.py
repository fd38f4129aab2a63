"""A certificate an auditor can read: the request's whole ledger trail, subjects with no data said plainly,
metrics named in words, one RFC 3339 UTC timestamp format in order; and the README's hashing rule, run as
written against a real export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.factories import create_model, drain, upload_dataset, upload_version

ROOT = Path(__file__).resolve().parents[2]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
LIFECYCLE = ("request.received", "request.queued", "job.queued", "job.started", "points.pruned",
             "audit.recorded", "version.registered", "version.promoted", "version.revoked", "job.completed",
             "request.completed", "points.erased")


@pytest.fixture
def toy(lethe_env: dict[str, str], admin_headers: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app()) as client:
        upload_dataset(client, admin_headers)
        create_model(client, admin_headers)
        assert upload_version(client, admin_headers).status_code == 201
        yield client


def forget(client: TestClient, headers: dict[str, str], **body: object) -> dict:
    r = client.post("/forget", headers=headers, json={"model": "toy", "reason": "Löschung nach Art. 17 — bitte",
                                                      "requested_by": "dpo"} | body)
    assert r.status_code in (200, 202), r.text
    return r.json()


def timestamps(cert: dict) -> list[str]:
    return [cert["created_at"], cert["completed_at"], cert["issued_at"], *(e["at"] for e in cert["ledger"])]


def test_certificate_lists_the_whole_lifecycle_in_order(toy: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    forget(toy, h, point_ids=["p0000", "p0001"])
    drain()  # scores toy@1, unlearns into toy@2 and revokes toy@1
    scores = [i for i in toy.get("/models/toy/versions/2/influence?limit=1000", headers=h).json()["items"]
              if i["point_id"] not in ("p0000", "p0001")]
    lowest, highest = scores[0]["point_id"], [i["point_id"] for i in scores[-3:]]
    answer = forget(toy, h, point_ids=[lowest, *highest])
    assert answer["job_id"], json.dumps(answer)
    drain()
    cert = toy.get(f"/requests/{answer['request_id']}/certificate", headers=h).json()
    assert cert["status"] == "completed"
    events = [e["event"] for e in cert["ledger"]]
    for needed in LIFECYCLE:
        assert needed in events, (needed, events)
    seqs = [e["seq"] for e in cert["ledger"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # the revocation listed is the one toy@2's successor caused, with what it purged; not toy@1's older one
    revoked = [e for e in cert["ledger"] if e["event"] == "version.revoked"]
    ledger = {e["seq"]: e for e in toy.get("/ledger?limit=1000", headers=h).json()["items"]}
    assert [ledger[e["seq"]]["data"]["ref"] for e in revoked] == ["toy@2"]
    assert ledger[revoked[0]["seq"]]["data"]["purged"]
    erased = [ledger[e["seq"]]["data"] for e in cert["ledger"] if e["event"] == "points.erased"]
    assert set(highest) | {lowest} <= {p for d in erased for p in d["point_ids"]}
    # every entry listed is the chain's own
    assert all(ledger[e["seq"]]["hash"] == e["hash"] and ledger[e["seq"]]["at"] == e["at"] for e in cert["ledger"])
    # one timestamp format everywhere, in order: created ≤ completed ≤ issued, entries by seq
    stamps = timestamps(cert)
    assert all(RFC3339.match(t) for t in stamps), stamps
    assert cert["created_at"] <= cert["completed_at"] <= cert["issued_at"]
    ats = [e["at"] for e in cert["ledger"]]
    assert ats == sorted(ats) and cert["created_at"] <= ats[0] and ats[-1] <= cert["issued_at"]
    # each metric quoted is named in words with its basis
    for key in ("ua", "ra", "ta", "mia", "statistic", "power", "null", "separation", "verdict"):
        assert {"name", "meaning", "basis"} <= set(cert["metrics"][key]), key
    job = toy.get(f"/jobs/{answer['job_id']}", headers=h).json()
    assert {"ua", "ra", "ta"} <= {k for k in job["result"]["audit"]["after"] if k in cert["metrics"]}
    # and the same format in every other answer
    req = toy.get(f"/requests/{answer['request_id']}", headers=h).json()
    assert all(RFC3339.match(t) for t in (req["created_at"], req["completed_at"], job["created_at"],
                                          job["started_at"], job["finished_at"]))
    assert RFC3339.match(toy.get("/ledger/head", headers=h).json()["checkpoint"]["signed_at"])


def test_request_answered_at_once_completes_when_created(toy: TestClient, admin_headers: dict[str, str]) -> None:
    h = admin_headers
    first = forget(toy, h, point_ids=["p0002"])
    drain()
    again = forget(toy, h, point_ids=["p0002"])  # already forgotten: answered at once, no job
    assert again["status"] == "completed" and again["job_id"] is None
    for request_id in (again["request_id"], first["request_id"]):
        read = toy.get(f"/requests/{request_id}", headers=h).json()
        assert read["created_at"] <= read["completed_at"], read
    read = toy.get(f"/requests/{again['request_id']}", headers=h).json()
    assert read["created_at"] == read["completed_at"]


def test_unknown_subjects_are_named_in_answer_request_and_certificate(toy: TestClient,
                                                                     admin_headers: dict[str, str]) -> None:
    from app.identity import keyed_hash

    h = admin_headers | {"Idempotency-Key": "typo-1"}
    body = {"subject_ids": ["s001", "subject-9999"]}
    answer = forget(toy, h, **body)
    hashed = keyed_hash("subject-9999")
    assert answer["unknown_subject_ids"] == ["subject-9999"]  # as given, in the caller's own answer
    assert answer["unknown_subjects"] == [hashed] and len(answer["pending"]) == 4  # s001's four points
    replay = forget(toy, h, **body)
    assert replay["request_id"] == answer["request_id"] and replay["unknown_subject_ids"] == ["subject-9999"]
    read = toy.get(f"/requests/{answer['request_id']}", headers=h).json()
    assert read["unknown_subjects"] == [hashed]
    drain()
    cert = toy.get(f"/requests/{answer['request_id']}/certificate", headers=h).json()
    assert cert["subjects_without_data"] == [{"subject_hash": hashed, "statement": "no data held for this subject"}]
    received = next(e for e in toy.get("/ledger?limit=1000", headers=h).json()["items"]
                    if e["event"] == "request.received" and e["subject_id"] == answer["request_id"])
    assert received["data"]["unknown_subjects"] == [hashed]
    # only a mistyped subject: completed at once, and still said plainly
    alone = forget(toy, admin_headers, subject_ids=["subject-9999"])
    assert alone["status"] == "completed" and alone["unknown_subject_ids"] == ["subject-9999"]
    cert = toy.get(f"/requests/{alone['request_id']}/certificate", headers=admin_headers).json()
    assert cert["points"] == [] and cert["subjects_without_data"][0]["statement"] == "no data held for this subject"
    # the clear id is stored nowhere: not in the request, the ledger or the certificate
    stored = json.dumps([toy.get(f"/requests/{r}", headers=admin_headers).json()
                         for r in (answer["request_id"], alone["request_id"])])
    stored += toy.get("/ledger?limit=1000", headers=admin_headers).text + json.dumps(cert)
    assert "subject-9999" not in stored


def _readme_block(marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert m, f"README block {marker} not found"
    return m.group(1)


def test_readme_hashing_rule_recomputes_a_real_export(toy: TestClient, admin_headers: dict[str, str],
                                                      tmp_path: Path) -> None:
    """The README's ten-line script, as written, in a clean directory: the rule cannot drift from the code."""
    h = admin_headers
    forget(toy, h, point_ids=["p0003"], subject_ids=["s004", "nobody"])  # non-ASCII reason, nested data
    drain()
    (tmp_path / "ledger.json").write_text(toy.get("/ledger?limit=1000", headers=h).text)
    (tmp_path / "head.json").write_text(toy.get("/ledger/head", headers=h).text)
    script = _readme_block("ledger-hash-python")
    assert len(script.strip().splitlines()) <= 12
    (tmp_path / "check.py").write_text(script)

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "check.py"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)

    ok = run()
    head = json.loads((tmp_path / "head.json").read_text())
    assert ok.returncode == 0 and ok.stdout.strip().endswith(f"head {head['hash']}"), ok.stdout + ok.stderr
    export = json.loads((tmp_path / "ledger.json").read_text())
    assert any(any(ord(c) > 127 for c in json.dumps(e["data"], ensure_ascii=False)) for e in export["items"])
    edited = next(e for e in export["items"] if e["event"] == "request.received")
    edited["data"]["reason"] = "nothing to see"
    (tmp_path / "ledger.json").write_text(json.dumps(export))
    bad = run()
    assert bad.returncode != 0 and f"chain broken at seq {edited['seq']}" in bad.stderr
