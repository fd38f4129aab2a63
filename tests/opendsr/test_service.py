"""OpenDSR request parsing (the spec's 400s) and the deadline metrics, without HTTP."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta

import pytest

from app.db import session_scope, utcnow
from app.opendsr import service
from app.opendsr.service import OpenDsrError
from app.opendsr.tables import OpenDsrRequest
from app.tenants import service as tenants


def body(**over: object) -> bytes:
    data = {"regulation": "gdpr", "subject_request_id": str(uuid.uuid4()), "subject_request_type": "erasure",
            "submitted_time": "2026-11-20T10:00:00+01:00",
            "subject_identities": [{"identity_type": "email", "identity_format": "raw", "identity_value": "a@b.c"}]}
    data.update(over)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def test_parse(sqlite_env: dict[str, str]) -> None:
    parsed, _ = service.parse(body(), legacy=False)
    assert parsed.regulation == "gdpr" and parsed.submitted_time.utcoffset() == timedelta(hours=1)
    legacy, _ = service.parse(body(regulation=None), legacy=True)
    assert legacy.regulation == "gdpr"
    digest = hashlib.sha1(b"a@b.c").hexdigest().upper()
    hashed, _ = service.parse(body(subject_identities=[
        {"identity_type": "email", "identity_format": "sha1", "identity_value": digest}]), legacy=False)
    assert hashed.subject_identities[0].identity_value == digest.lower()
    for bad in (body(regulation=None), body(subject_request_id="A" * 36), body(subject_request_type="portability"),
                body(subject_identities=[{"identity_type": "email", "identity_format": "sha512",
                                          "identity_value": "00"}]),
                body(status_callback_urls=["http://10.1.2.3/cb"]), b"[]", b"\xff"):
        with pytest.raises(OpenDsrError) as info:
            service.parse(bad, legacy=False)
        assert info.value.status_code == 400 and info.value.errors


def test_deadline_buckets_and_misses(lethe_env: dict[str, str]) -> None:
    now = utcnow()
    with session_scope() as s:
        tid = tenants.get_or_create_tenant(s, name="acme").id
        for status, left, completed in [("pending", timedelta(days=-1), None),
                                        ("in_progress", timedelta(hours=3), None),
                                        ("pending", timedelta(days=20), None), ("pending", timedelta(days=40), None),
                                        ("completed", timedelta(days=-2), now),
                                        ("completed", timedelta(days=2), now)]:
            s.add(OpenDsrRequest(tenant_id=tid, subject_request_id=str(uuid.uuid4()), regulation="gdpr",
                                 subject_request_type="erasure", status=status, body_hash="0" * 64,
                                 submitted_at=now, expected_completion_at=now + left, completed_at=completed))
    with session_scope() as s:
        buckets, missed = service.open_by_time_left(s, now=now)
    assert buckets == {"overdue": 1, "lt_1d": 1, "lt_7d": 0, "lt_30d": 1, "ge_30d": 1}
    assert missed == 2  # open past its deadline, and completed after it
    from prometheus_client import generate_latest

    from app.opendsr import metrics

    metrics.register()
    metrics.register()  # once per process
    text = generate_latest(metrics.registry()).decode()
    assert 'lethe_opendsr_open_requests{time_left="ge_30d"} 1.0' in text
    assert "lethe_opendsr_deadlines_missed_total 2.0" in text
