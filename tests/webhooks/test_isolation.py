"""One slow webhook receiver stalls nobody else: deliveries have an overall deadline and run beside the relay in a
bounded pool with a per-tenant share, so another tenant's jobs are published and its events delivered at once."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.factories import create_model, tenant_headers, upload_dataset, upload_version
from tests.support import Receiver, Trickler, wait_until


@pytest.fixture
def client_settings() -> dict[str, str]:
    return {
        "LETHE_WEBHOOKS_ALLOW_PRIVATE": "true",  # loopback receivers, explicitly allowed
        "LETHE_WEBHOOK_DEADLINE": "3",
        "LETHE_WEBHOOK_WORKERS": "3",
        "LETHE_WEBHOOK_TENANT_CONCURRENCY": "2",
        "LETHE_ERASURE_INTERVAL": "0"
    }


def published(job_id: str) -> bool:
    from app.db import session_scope
    from app.jobs.tables import Outbox

    with session_scope(readonly=True) as s:
        return s.scalar(select(Outbox.published_at).where(Outbox.job_id == job_id)) is not None


def test_a_trickling_receiver_delays_no_other_tenant(client: TestClient, admin_headers: dict[str, str]) -> None:
    from app.jobs.outbox import Relay

    slow, fast = Trickler(every=1.0), Receiver()
    relay = Relay(0.1)
    try:
        a = admin_headers
        for _ in range(3):  # three deliveries per event: more than tenant A's share of the senders
            assert client.post("/webhooks", headers=a, json={"url": slow.url, "events": ["version.promoted"]}
                               ).status_code == 201
        upload_dataset(client, a)
        create_model(client, a)
        assert upload_version(client, a).status_code == 201  # toy@1 promoted: 3 deliveries to the trickler
        relay.start()
        wait_until(lambda: slow.connections >= 1, 10, "the trickling receiver's first connections")

        b = tenant_headers(client, a, "tenant-b")
        assert client.post("/webhooks", headers=b, json={"url": fast.url, "events": ["version.promoted"]}
                           ).status_code == 201
        upload_dataset(client, b)
        create_model(client, b)
        job = client.post("/models/toy/train", headers=b)
        assert job.status_code == 202
        wait_until(lambda: published(job.json()["job_id"]), 3, "tenant B's job published while A's receiver trickles")
        assert upload_version(client, b).status_code == 201
        wait_until(lambda: fast.got, 3, "tenant B's event delivered while A's receiver trickles")
        assert slow.connections == 2  # A holds its share of the senders, no more

        # each of A's deliveries ends at the overall deadline, however slowly the bytes keep coming
        def timed_out() -> list[dict]:
            items = client.get("/webhooks/deliveries", headers=a).json()["items"]
            return [d for d in items if d["attempts"] >= 1 and "deadline" in (d["last_error"] or "")]

        wait_until(lambda: len(timed_out()) >= 2, 8, "A's deliveries to end at LETHE_WEBHOOK_DEADLINE")
        assert all(d["last_status"] is None and d["delivered_at"] is None for d in timed_out())
        assert not any("127.0.0.1" in d["last_error"] for d in timed_out())  # errors name no address
    finally:
        relay.stop()
        relay.join(10)
        slow.close()
        fast.close()


def test_a_long_erasure_sweep_does_not_hold_job_publishing(client: TestClient, admin_headers: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from app.datasets import service as datasets
    from app.jobs.outbox import Relay
    from app.settings import get_settings

    h = admin_headers
    upload_dataset(client, h)
    create_model(client, h)
    sweeping, release = threading.Event(), threading.Event()

    def slow_sweep(*, since: object = None) -> list[str]:  # an O(dataset) rewrite of a large dataset
        sweeping.set()
        release.wait(30)
        return []

    monkeypatch.setattr(datasets, "sweep_erasures", slow_sweep)
    monkeypatch.setenv("LETHE_ERASURE_INTERVAL", "0.2")
    get_settings.cache_clear()
    relay = Relay(0.1)
    relay.start()
    try:
        wait_until(sweeping.is_set, 10, "the relay's erasure sweep to start")
        job = client.post("/models/toy/train", headers=h)
        assert job.status_code == 202
        wait_until(lambda: published(job.json()["job_id"]), 3, "the job published while a sweep runs")
    finally:
        release.set()
        relay.stop()
        relay.join(10)
