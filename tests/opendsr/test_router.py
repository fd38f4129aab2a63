"""A controller simulator drives the OpenDSR processor interface end to end: discovery, signed 201s and
statuses, fan-out to every model holding the subject, jobs run to completion, signed callbacks to a local
receiver, cancellation, the legacy OpenGDPR names, malformed bodies, idempotency and deadline ordering."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.demo import digits_npz
from app.webhooks.service import deliver_due
from tests.factories import create_model, drain, npz_bytes, upload_dataset
from tests.support import Receiver

DIGITS_ONLY, SHARED, CHURN_ONLY = "subject-007", "subject-281", "subject-300"


class Controller:
    """The governance system's side: a callback receiver, and signature checks against discovery's certificate."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.receiver = Receiver(path="/opendsr_callbacks")
        self.got, self.url = self.receiver.got, self.receiver.url
        discovery = client.get("/opendsr/v1/discovery")  # public, like the certificate
        assert discovery.status_code == 200
        self.discovery = discovery.json()
        cert = client.get(self.discovery["processor_certificate"])
        assert cert.status_code == 200 and cert.content.startswith(b"-----BEGIN CERTIFICATE-----")
        self.certificate = x509.load_pem_x509_certificate(cert.content)

    def valid(self, headers: Any, body: bytes, prefix: str = "X-OpenDSR") -> bool:
        """Verify the raw body against the header signature before parsing it (spec §8.8)."""
        try:
            self.certificate.public_key().verify(base64.b64decode(headers[f"{prefix}-Signature"]), body,
                                                 padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001
            return False
        return bool(headers[f"{prefix}-Processor-Domain"])

    def callbacks(self) -> list[dict[str, Any]]:
        assert all(self.valid(h, b) and self.valid(h, b, "X-OpenGDPR") for h, b in self.got)
        return [json.loads(b) for _, b in self.got]


@pytest.fixture
def client_settings() -> dict[str, str]:
    return {
        "LETHE_WEBHOOKS_ALLOW_PRIVATE": "true",  # the loopback receiver, explicitly allowed
        "LETHE_FREE_BUDGET": "0"  # nothing is free: every point goes through a job
    }


@pytest.fixture
def controller(client: TestClient) -> Iterator[Controller]:
    c = Controller(client)
    yield c
    c.receiver.close()


def churn_npz() -> bytes:
    """A second dataset whose subjects overlap the digits demo's: subject-280 … subject-309."""
    arrays = dict(np.load(io.BytesIO(npz_bytes(n=120, n_test=40, d=8, subjects=False))))
    arrays["subjects"] = np.array([f"subject-{280 + i // 4:03d}" for i in range(120)])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def setup_models(client: TestClient, h: dict[str, str]) -> None:
    """The demo's digits (5 points per subject-NNN) and a churn model on the second dataset, trained and scored."""
    upload_dataset(client, h, name="digits", data=digits_npz())
    upload_dataset(client, h, name="churn", data=churn_npz())
    create_model(client, h, name="digits", dataset="digits", recipe={"epochs": 2, "batch_size": 64, "lr": 0.01})
    create_model(client, h, name="churn", dataset="churn")
    for name in ("digits", "churn"):
        assert client.post(f"/models/{name}/train", headers=h).status_code == 202
    drain()


def erasure(subject: str | list[dict[str, str]], *, callbacks: list[str] | None = None, regulation: str = "gdpr",
            srid: str | None = None) -> dict[str, Any]:
    identities = subject if isinstance(subject, list) else [
        {"identity_type": "controller_customer_id", "identity_value": subject, "identity_format": "raw"}]
    body: dict[str, Any] = {
        "regulation": regulation, "subject_request_id": srid or str(uuid.uuid4()), "subject_request_type": "erasure",
        "submitted_time": "2026-11-20T10:00:00Z", "subject_identities": identities, "api_version": "1.0",
        "extensions": {"lethe.example": {"note": "ignored"}},
    }
    if callbacks:
        body["status_callback_urls"] = callbacks
    return body


def post(client: TestClient, h: dict[str, str], body: dict[str, Any], name: str = "opendsr_requests") -> Any:
    return client.post(f"/opendsr/v1/{name}", headers=h | {"Content-Type": "application/json"},
                       content=json.dumps(body).encode())


def queued_unlearn_jobs() -> list[str]:
    from app.db import session_scope
    from app.jobs.tables import Job

    with session_scope() as s:
        return list(s.scalars(select(Job.id).where(Job.kind == "unlearn", Job.status == "queued")
                              .order_by(Job.created_at)))


def count(table: Any) -> int:
    from app.db import session_scope

    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_erasure_fans_out_completes_and_calls_back(client: TestClient, admin_headers: dict[str, str],
                                                   controller: Controller) -> None:
    from workers import pipeline

    h = admin_headers
    d = controller.discovery
    assert d["api_version"] == "1.0" and d["supported_subject_request_types"] == ["erasure"]
    assert {"identity_type": "email", "identity_format": "sha256"} in d["supported_identities"]
    assert d["processor_certificate"].endswith("/opendsr/v1/certificate.pem")
    setup_models(client, h)

    body = erasure(SHARED, callbacks=[controller.url])
    resp = post(client, h, body)
    assert resp.status_code == 201, resp.text
    assert controller.valid(resp.headers, resp.content) and controller.valid(resp.headers, resp.content, "X-OpenGDPR")
    created = resp.json()
    assert created["subject_request_id"] == body["subject_request_id"]
    assert json.loads(base64.b64decode(created["encoded_request"])) == body
    assert {"controller_id", "expected_completion_time", "received_time"} <= set(created)
    srid = body["subject_request_id"]

    status = client.get(f"/opendsr/v1/opendsr_requests/{srid}", headers=h)
    assert status.status_code == 200 and controller.valid(status.headers, status.content)
    assert status.json()["request_status"] == "pending" and status.json()["results_count"] == 0
    assert status.json()["expected_completion_time"] == created["expected_completion_time"]
    requests = client.get("/requests", headers=h).json()
    assert requests["total"] == 2 and {r["model"] for r in requests["items"]} == {"digits", "churn"}

    first, second = queued_unlearn_jobs()
    pipeline.run_inline(first)
    mid = client.get(f"/opendsr/v1/opendsr_requests/{srid}", headers=h).json()
    assert mid["request_status"] == "in_progress"
    pipeline.run_inline(second)
    drain()
    done = client.get(f"/opendsr/v1/opendsr_requests/{srid}", headers=h)
    assert controller.valid(done.headers, done.content)
    assert done.json()["request_status"] == "completed"
    assert done.json()["results_count"] == 5 + 4  # subject-281: 5 digits points and 4 churn points
    assert all(r["status"] == "completed" for r in client.get("/requests", headers=h).json()["items"])

    assert deliver_due() == 2
    calls = controller.callbacks()
    assert [c["request_status"] for c in calls] == ["in_progress", "completed"]
    assert calls[-1]["results_count"] == 9 and all(c["status_callback_url"] == controller.url for c in calls)
    assert all(c["subject_request_id"] == srid and c["expected_completion_time"] for c in calls)
    assert deliver_due() == 0  # nothing twice
    ledger = client.get("/ledger?limit=1000", headers=h).json()["items"]
    events = [e["event"] for e in ledger]
    assert events.count("opendsr.received") == 1 and events.count("opendsr.status") == 2
    deliveries = [e["data"] for e in ledger if e["event"] == "opendsr.callback"]
    assert len(deliveries) == 2 and all(x["delivered"] and x["http_status"] == 200 for x in deliveries)
    assert SHARED not in json.dumps(ledger)  # identities only as keyed hashes
    assert client.get("/ledger/verify", headers=h).json()["ok"]

    # the same subject_request_id again: the original answer, no second fan-out
    again = post(client, h, body)
    assert again.status_code == 201 and again.json() == created
    assert client.get("/requests", headers=h).json()["total"] == 2
    changed = post(client, h, body | {"regulation": "ccpa"})
    assert changed.status_code == 400 and changed.json()["error"]["code"] == 400


def test_hashed_identities_and_unknown_subjects(client: TestClient, admin_headers: dict[str, str],
                                                controller: Controller) -> None:
    h = admin_headers
    setup_models(client, h)
    hashed = [{"identity_type": "email", "identity_format": "sha256",
               "identity_value": hashlib.sha256(DIGITS_ONLY.encode()).hexdigest().upper()},
              {"identity_type": "controller_customer_id", "identity_format": "md5",
               "identity_value": hashlib.md5(CHURN_ONLY.encode()).hexdigest()}]
    resp = post(client, h, erasure(hashed))
    assert resp.status_code == 201, resp.text
    assert {r["model"] for r in client.get("/requests", headers=h).json()["items"]} == {"digits", "churn"}
    drain()
    done = client.get(f"/opendsr/v1/opendsr_requests/{resp.json()['subject_request_id']}", headers=h).json()
    assert done["request_status"] == "completed" and done["results_count"] == 5 + 4

    unknown = erasure("nobody@example.com", callbacks=[controller.url])
    resp = post(client, h, unknown)
    assert resp.status_code == 201
    status = client.get(f"/opendsr/v1/opendsr_requests/{unknown['subject_request_id']}", headers=h).json()
    assert status["request_status"] == "completed" and status["results_count"] == 0
    assert deliver_due() == 1
    assert [c["request_status"] for c in controller.callbacks()] == ["completed"]


def test_cancel_while_pending(client: TestClient, admin_headers: dict[str, str], controller: Controller) -> None:
    h = admin_headers
    setup_models(client, h)
    body = erasure(DIGITS_ONLY, callbacks=[controller.url])
    assert post(client, h, body).status_code == 201
    srid = body["subject_request_id"]
    (job_id,) = queued_unlearn_jobs()
    resp = client.delete(f"/opendsr/v1/opendsr_requests/{srid}", headers=h)
    assert resp.status_code == 202 and controller.valid(resp.headers, resp.content)
    assert resp.json()["subject_request_id"] == srid and "received_time" in resp.json()
    status = client.get(f"/opendsr/v1/opendsr_requests/{srid}", headers=h).json()
    assert status["request_status"] == "cancelled" and status["results_count"] == 0
    assert client.get(f"/jobs/{job_id}", headers=h).json()["status"] == "cancelled"
    assert [r["status"] for r in client.get("/requests", headers=h).json()["items"]] == ["cancelled"]
    assert client.delete(f"/opendsr/v1/opendsr_requests/{srid}", headers=h).status_code == 202  # idempotent
    assert deliver_due() == 1
    assert [c["request_status"] for c in controller.callbacks()] == ["cancelled"]

    # cancelling the forget request itself (POST /requests/{id}/cancel) calls the controller back too
    body = erasure(DIGITS_ONLY, callbacks=[controller.url])
    assert post(client, h, body).status_code == 201
    (forget_id,) = [r["id"] for r in client.get("/requests", headers=h).json()["items"] if r["status"] == "accepted"]
    assert client.post(f"/requests/{forget_id}/cancel", headers=h).status_code == 200
    status = client.get(f"/opendsr/v1/opendsr_requests/{body['subject_request_id']}", headers=h).json()
    assert status["request_status"] == "cancelled"
    assert deliver_due() == 1
    assert [c["request_status"] for c in controller.callbacks()] == ["cancelled", "cancelled"]
    assert controller.callbacks()[-1]["subject_request_id"] == body["subject_request_id"]

    # once a job ran, cancellation is refused in the spec's error shape
    body = erasure(CHURN_ONLY)
    post(client, h, body)
    drain()
    refused = client.delete(f"/opendsr/v1/opendsr_requests/{body['subject_request_id']}", headers=h)
    assert refused.status_code == 400 and "completed" in refused.json()["error"]["message"]
    missing = client.get(f"/opendsr/v1/opendsr_requests/{uuid.uuid4()}", headers=h)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404


def test_legacy_opengdpr_names(client: TestClient, admin_headers: dict[str, str], controller: Controller) -> None:
    h = admin_headers
    setup_models(client, h)
    body = erasure(DIGITS_ONLY, callbacks=[controller.url])
    del body["regulation"]  # OpenGDPR had no regulation field: gdpr
    resp = post(client, h, body, "opengdpr_requests")
    assert resp.status_code == 201, resp.text
    assert controller.valid(resp.headers, resp.content, "X-OpenGDPR")
    srid = body["subject_request_id"]
    status = client.get(f"/opendsr/v1/opengdpr_requests/{srid}", headers=h)
    assert controller.valid(status.headers, status.content, "X-OpenGDPR")
    assert status.json()["request_status"] == "pending"
    drain()
    assert client.get(f"/opendsr/v1/opengdpr_requests/{srid}", headers=h).json()["request_status"] == "completed"
    assert deliver_due() == 2
    assert [c["request_status"] for c in controller.callbacks()] == ["in_progress", "completed"]
    other = erasure(CHURN_ONLY)
    del other["regulation"]
    assert post(client, h, other).status_code == 400  # the current name requires it
    assert post(client, h, other, "opengdpr_requests").status_code == 201
    cancelled = client.delete(f"/opendsr/v1/opengdpr_requests/{other['subject_request_id']}", headers=h)
    assert cancelled.status_code == 202 and controller.valid(cancelled.headers, cancelled.content, "X-OpenGDPR")


def test_malformed_requests_are_400_and_record_nothing(client: TestClient, admin_headers: dict[str, str]) -> None:
    from app.forget.tables import ForgetRequest
    from app.ledger.tables import LedgerEntry
    from app.opendsr.tables import OpenDsrRequest

    h = admin_headers
    setup_models(client, h)
    before = count(LedgerEntry)
    good = erasure(DIGITS_ONLY)
    bad_bodies = [
        {k: v for k, v in good.items() if k != "subject_request_id"},
        good | {"subject_request_id": str(uuid.uuid4()).upper()},
        good | {"subject_request_id": "not-a-uuid"},
        good | {"subject_request_type": "access"},
        good | {"regulation": "hipaa"},
        good | {"subject_identities": []},
        good | {"submitted_time": "yesterday"},
        good | {"submitted_time": "2026-11-20T10:00:00"},  # RFC 3339 needs an offset
        good | {"subject_identities": [{"identity_type": "email", "identity_format": "sha256",
                                        "identity_value": "secret@example.com"}]},
        good | {"subject_identities": [{"identity_type": "passport", "identity_format": "raw",
                                        "identity_value": "X"}]},
        good | {"status_callback_urls": ["ftp://example.com/cb"]},
    ]
    for bad in bad_bodies:
        resp = post(client, h, bad)
        assert resp.status_code == 400, (bad, resp.text)
        error = resp.json()["error"]
        assert error["code"] == 400 and error["message"] and error["errors"]
        assert {"domain", "reason", "message"} <= set(error["errors"][0])
        assert "secret@example.com" not in resp.text  # no identity data in errors
    raw = client.post("/opendsr/v1/opendsr_requests", headers=h, content=b"{not json")
    assert raw.status_code == 400 and raw.json()["error"]["errors"][0]["reason"] == "InvalidJson"
    assert count(OpenDsrRequest) == 0 and count(ForgetRequest) == 0 and count(LedgerEntry) == before

    noauth = post(client, {}, good)
    assert noauth.status_code == 401 and noauth.json()["error"]["code"] == 401
    key = client.post("/keys", headers=h, json={"scopes": ["read"]}).json()["key"]
    reader = {"Authorization": f"Bearer {key}"}
    assert post(client, reader, good).status_code == 403
    assert count(OpenDsrRequest) == 0


def test_earlier_deadlines_are_published_first(client: TestClient, admin_headers: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from app.db import session_scope
    from app.jobs import service as jobs
    from app.jobs.tables import Job
    from app.opendsr import router
    from app.registry.tables import Model

    h = admin_headers
    setup_models(client, h)
    monkeypatch.setattr(router, "kick", lambda: None)  # keep the outbox rows unpublished to look at their order
    ccpa = post(client, h, erasure(DIGITS_ONLY, regulation="ccpa")).json()
    gdpr = post(client, h, erasure(CHURN_ONLY, regulation="gdpr")).json()
    assert ccpa["expected_completion_time"] > gdpr["expected_completion_time"]  # 45 days against 30
    with session_scope() as s:
        rows = [(s.get(Job, r.job_id), r.deadline) for r in jobs.pending_outbox(s)]
        order = [(s.get(Model, job.model_id).name, deadline, job.deadline) for job, deadline in rows
                 if job.kind == "unlearn"]
    assert [name for name, _, _ in order] == ["churn", "digits"]  # the later request, nearer its deadline, first
    assert all(d is not None and j is not None for _, d, j in order)
