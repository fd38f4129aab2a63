"""Webhook deliveries off the relay thread: a bounded pool of sender threads with a per-tenant share, so one slow
receiver holds at most LETHE_WEBHOOK_TENANT_CONCURRENCY senders and never the relay (which publishes jobs)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from app.settings import get_settings
from app.webhooks import service

log = logging.getLogger("lethe.webhooks")


class DeliveryPool:
    """Hands due deliveries to sender threads; `pump` returns at once (it never waits for a receiver)."""

    def __init__(self, workers: int | None = None, per_tenant: int | None = None) -> None:
        settings = get_settings()
        self.workers = workers or settings.webhook_workers
        self.per_tenant = per_tenant or settings.webhook_tenant_concurrency
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="lethe-webhook")
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()  # tenant id -> deliveries in flight

    def pump(self) -> int:
        """Claim due deliveries up to the free senders and each tenant's share; returns how many were handed on."""
        with self._lock:
            free = self.workers - sum(self._busy.values())
            full = frozenset(t for t, n in self._busy.items() if n >= self.per_tenant)
        if free <= 0:
            return 0
        started = 0
        for delivery_id, tenant_id in service.due(limit=max(50, 4 * self.workers), skip_tenants=full):
            if started >= free:
                break
            with self._lock:
                if self._busy[tenant_id] >= self.per_tenant:
                    continue
            if not service.claim(delivery_id=delivery_id):
                continue  # another relay (API replica) took it
            with self._lock:
                self._busy[tenant_id] += 1
            self._executor.submit(self._send, delivery_id, tenant_id)
            started += 1
        return started

    def _send(self, delivery_id: int, tenant_id: str) -> None:
        try:
            service.deliver_one(delivery_id=delivery_id)
        except Exception as exc:  # noqa: BLE001 - a lost database: the claim lapses and the delivery is retried
            log.warning("webhook delivery %s failed: %s", delivery_id, exc)
        finally:
            with self._lock:
                self._busy[tenant_id] -= 1
                if self._busy[tenant_id] <= 0:
                    del self._busy[tenant_id]

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._busy.values())

    def shutdown(self, wait: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
