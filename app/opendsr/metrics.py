"""OpenDSR deadline metrics, read from the database at scrape time (so every process reports the same)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app import metrics as app_metrics
from app.db import session_scope
from app.opendsr import service

log = logging.getLogger("lethe.opendsr")


class DeadlineCollector(Collector):
    """lethe_opendsr_open_requests{time_left} and lethe_opendsr_deadlines_missed_total."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            with session_scope(readonly=True) as session:
                buckets, missed = service.open_by_time_left(session)
        except Exception as exc:  # noqa: BLE001 - a scrape never fails for a lost database
            log.warning("OpenDSR metrics unavailable: %s", exc)
            return
        yield from _families(buckets, missed)

    def describe(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        """The families without values: registration and the dashboard test need no database."""
        return _families({}, None)


def _families(buckets: dict[str, int], missed: int | None) -> list[GaugeMetricFamily | CounterMetricFamily]:
    gauge = GaugeMetricFamily("lethe_opendsr_open_requests",
                              "Open OpenDSR requests (pending or in_progress) by time left to their deadline",
                              labels=["time_left"])
    for bucket, n in buckets.items():
        gauge.add_metric([bucket], n)
    return [gauge, CounterMetricFamily("lethe_opendsr_deadlines_missed",
                                       "OpenDSR requests past their deadline while open, or completed after it",
                                       value=missed)]


def registry() -> CollectorRegistry:
    """The registry GET /metrics serves."""
    return app_metrics.REGISTRY


def register() -> None:
    """Add the collector to that registry (once per process: app.metrics.register keeps one per kind)."""
    app_metrics.register(DeadlineCollector())


register()
