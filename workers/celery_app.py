"""Celery configuration shared by the API (publishing) and the workers (consuming).

Imports neither torch nor the engine, so the API can publish without the worker extra.
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings, get_settings

# Above the longest job: Redis redelivers an unacknowledged task after this many seconds.
VISIBILITY_TIMEOUT = 6 * 3600


def make_celery(settings: Settings) -> Celery:
    url = settings.celery_broker_url
    if url.startswith("sqla+sqlite"):
        settings.ensure_data_dir()
    # The result backend serves only chords (sharded scoring); every other task ignores its result.
    app = Celery("lethe", broker=url, backend=settings.celery_result_backend, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        task_default_queue="lethe",
    )
    if url.startswith("redis"):
        # The sqla transport hands these options to create_engine, so they are Redis-only.
        app.conf.broker_transport_options = {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "priority_steps": list(range(settings.redis_priority_steps)),
            "queue_order_strategy": "priority",
            # A Redis that accepts connections but never answers (stopped, partitioned) must fail a publish
            # in seconds, not hang the outbox relay (or a request that relays inline) forever.
            "socket_connect_timeout": 3,
            "socket_timeout": 3,
        }
    return app


celery = make_celery(get_settings())
