"""The outbox relay: publish committed job rows to the broker, earliest deadline first."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from app.db import session_scope, utcnow
from app.jobs.service import RUN_JOB, lapsed_jobs, pending_outbox
from app.settings import get_settings
from app.webhooks.pool import DeliveryPool

log = logging.getLogger("lethe.outbox")
FULL_SWEEP = 30  # every 30th erasure sweep looks at every dataset
RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# Publishing never subscribes to a task's result (ignore_result=True): nothing reads these results, and with a
# Redis result backend the subscription alone retries ~20 s when Redis is down, then breaks the result consumer.


def relay_once() -> int:
    """Publish every unpublished row; stop at the first broker failure (retried next pass)."""
    from workers.celery_app import celery

    published = 0
    with session_scope() as session:
        for row in pending_outbox(session):
            try:
                # Earlier deadlines first on brokers with priorities (Redis: 0 is highest).
                celery.send_task(row.task, kwargs=row.payload, retry=True, retry_policy=RETRY,
                                 priority=0 if row.deadline else 5, ignore_result=True)
            except Exception as exc:  # noqa: BLE001 - any broker failure leaves the row for the next pass
                row.attempts += 1
                log.warning("outbox: broker unavailable (%s); %s left for the next pass", exc, row.job_id)
                break
            row.published_at = utcnow()
            published += 1
    return published


def requeue_lapsed() -> int:
    """Publish again the running jobs whose lease lapsed (their worker died); the claim decides who runs."""
    from workers.celery_app import celery

    with session_scope() as session:
        lapsed = lapsed_jobs(session)
    for job_id in lapsed:
        try:
            celery.send_task(RUN_JOB, kwargs={"job_id": job_id}, retry=True, retry_policy=RETRY, ignore_result=True)
            log.warning("job %s lost its worker: published again", job_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("outbox: broker unavailable (%s)", exc)
            break
    return len(lapsed)


def safe_relay() -> None:
    """relay_once for background use: never raises (a lost database is retried next pass)."""
    try:
        relay_once()
    except Exception as exc:  # noqa: BLE001
        log.warning("outbox relay failed: %s", exc)


def safe_deliver(pool: DeliveryPool) -> None:
    """Hand due webhook events to the delivery pool (returns at once: receivers never hold the relay); never
    raises."""
    try:
        pool.pump()
    except Exception as exc:  # noqa: BLE001
        log.warning("webhook delivery pass failed: %s", exc)


def safe_sweep(since: datetime | None) -> bool:
    """Erase what forget requests cleared since `since` (None: everything); never raises. True if it ran."""
    from app.datasets.service import sweep_erasures

    try:
        sweep_erasures(since=since)
        return True
    except Exception as exc:  # noqa: BLE001
        log.warning("erasure sweep failed: %s", exc)
        return False


_running: Relay | None = None


def kick() -> None:
    """After a commit that queued jobs: wake this process's relay thread, or relay inline when there is none."""
    if _running is not None and _running.is_alive():
        _running.wake.set()
    else:
        safe_relay()


class Relay(threading.Thread):
    """A daemon that runs the relay every `interval` seconds (or when kicked) until stopped."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="lethe-outbox", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.wake = threading.Event()
        self.deliveries: DeliveryPool | None = None
        self.sweeper: threading.Thread | None = None  # an erasure sweep (O(dataset)) never holds job publishing
        self.since: datetime | None = None  # None: look at every dataset (the first sweep, then every FULL_SWEEP-th)

    def start(self) -> None:
        global _running
        _running = self
        super().start()

    def run(self) -> None:
        self.deliveries = DeliveryPool()
        passes = 0
        swept = time.monotonic()
        sweeps = 0
        while not self.stopped.is_set():
            erasure = get_settings().erasure_interval
            wait = min(self.interval, max(0.0, swept + erasure - time.monotonic())) if erasure else self.interval
            self.wake.wait(wait)
            self.wake.clear()
            if self.stopped.is_set():
                break
            safe_relay()
            safe_deliver(self.deliveries)
            sweeping = self.sweeper is not None and self.sweeper.is_alive()
            if erasure and time.monotonic() - swept >= erasure and not sweeping:
                swept, began = time.monotonic(), utcnow() - timedelta(seconds=5)  # margin: flush vs commit
                sweeps += 1
                # Recent final dispositions point at the datasets to look at; a periodic full sweep catches
                # points cleared otherwise (a lineage's last version revoked, say).
                since = None if sweeps % FULL_SWEEP == 0 else self.since
                self.sweeper = threading.Thread(target=self._sweep, args=(since, began), name="lethe-erasure",
                                                daemon=True)
                self.sweeper.start()
            passes += 1
            if passes % 10 == 0:
                try:
                    requeue_lapsed()
                except Exception as exc:  # noqa: BLE001
                    log.warning("lapsed-job check failed: %s", exc)

    def _sweep(self, since: datetime | None, began: datetime) -> None:
        if safe_sweep(since):
            self.since = began

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        if self.deliveries is not None:
            self.deliveries.shutdown()
