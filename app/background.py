"""What `lethe serve` runs beside the API, each duty its own loop so that none holds another: publishing the
outbox, delivering webhooks (a bounded sender pool with a per-tenant share), sweeping cleared points' erasure,
and publishing again the jobs whose worker died."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from app.datasets import service as datasets
from app.db import utcnow
from app.jobs import outbox
from app.settings import get_settings
from app.webhooks import service as webhooks
from app.webhooks.pool import DeliveryPool

log = logging.getLogger("lethe.background")
FULL_SWEEP = 30  # every 30th erasure sweep looks at every dataset
REQUEUE_EVERY = 10  # lapsed jobs are looked for every 10th publishing interval


class Loop(threading.Thread):
    """Runs `step` every `interval` seconds, or at once when `wake` is set, until stopped; a failing step is
    logged and retried next time."""

    def __init__(self, name: str, interval: float, step: Callable[[], object],
                 wake: threading.Event | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.interval, self.step = interval, step
        self.wake = wake or threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if self.stopped.is_set():
                break
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a background duty never dies of one failure
                log.warning("%s failed: %s", self.name, exc)

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()


class Sweeper:
    """Erases what forget requests cleared: incrementally (datasets where a point reached a final disposition
    since the last sweep), and every FULL_SWEEP-th time everywhere (points cleared otherwise, a lineage's last
    version revoked, say)."""

    def __init__(self) -> None:
        self.since: datetime | None = None  # None: look at every dataset (the first sweep)
        self.sweeps = 0

    def __call__(self) -> None:
        began = utcnow() - timedelta(seconds=5)  # margin: flush vs commit
        self.sweeps += 1
        datasets.sweep_erasures(since=None if self.sweeps % FULL_SWEEP == 0 else self.since)
        self.since = began


class Background:
    """Starts and stops the loops together."""

    def __init__(self, interval: float) -> None:
        self.deliveries = DeliveryPool()
        self.publisher = Loop("lethe-outbox", interval, outbox.safe_relay, wake=outbox.WAKE)
        self.loops = [self.publisher,
                      Loop("lethe-webhooks", interval, self.deliveries.pump, wake=webhooks.DUE),
                      Loop("lethe-requeue", interval * REQUEUE_EVERY, outbox.requeue_lapsed)]
        erasure = get_settings().erasure_interval
        if erasure:  # 0: forget requests erase inline
            self.loops.append(Loop("lethe-erasure", erasure, Sweeper()))

    def start(self) -> None:
        outbox.attach(self.publisher)
        for loop in self.loops:
            loop.start()

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()
        outbox.attach(None)
        self.deliveries.shutdown()

    def join(self, timeout: float | None = None) -> None:
        for loop in self.loops:
            loop.join(timeout)
