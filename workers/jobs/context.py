"""What a running job carries: its claim, timed phases with throttled progress, and its heartbeat.

Every write goes through app.jobs.service (progress, renew, fence, complete); this module only remembers which
attempt this process claimed, so the final transactions can fence against a newer one.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from app.datasets.tables import Dataset
from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.tables import Job
from app.registry.tables import Model
from app.settings import get_settings

log = logging.getLogger("lethe.jobs")
PROGRESS_EVERY = 0.5  # seconds between progress writes
Progress = Callable[[float], None]

# job id -> the attempt number this process claimed; the final transactions fence with it.
_CLAIMS: dict[str, int] = {}
# The running phase (name, perf_counter at entry) of this thread's job: the phase completing a job is timed in
# the completing commit, not just after it.
_PHASE: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar("lethe_phase", default=None)


def claimed(job_id: str) -> int | None:
    """The attempt of `job_id` this process claimed (None: not run through a claim here, e.g. a chord's join)."""
    return _CLAIMS.get(job_id)


def fence(s: Any, job_id: str) -> None:
    """jobs.fence with this process's attempt: Superseded when another worker owns the job now."""
    jobs.fence(s, job_id=job_id, attempt=claimed(job_id))


def complete(s: Any, job: Job, result: dict[str, Any], *, timing: tuple[str, float] | None = None) -> None:
    """jobs.complete with this process's attempt and the running phase's seconds (or `timing`)."""
    current = _PHASE.get()
    if timing is None and current is not None:
        timing = (current[0], round(time.perf_counter() - current[1], 4))
    jobs.complete(s, job=job, result=result, attempt=claimed(job.id), timing=timing)


class JobContext:
    """Phase timings and throttled progress of one running job, each write a short transaction."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._last = 0.0

    def _write(self, **values: Any) -> None:
        with session_scope() as s:
            jobs.progress(s, job_id=self.job_id, attempt=claimed(self.job_id), **values)

    @contextmanager
    def phase(self, name: str, start: float, end: float) -> Iterator[Progress]:
        """Enter a phase owning progress [start, end]; record its seconds in the job's timings."""
        self._write(phase=name, progress=start)
        began = time.perf_counter()
        token = _PHASE.set((name, began))

        def progress(fraction: float) -> None:
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVERY:
                self._last = now
                self._write(progress=round(start + (end - start) * min(max(fraction, 0.0), 1.0), 4))

        try:
            yield progress
        finally:
            _PHASE.reset(token)
        self._write(progress=end, timing=(name, round(time.perf_counter() - began, 4)))


class Heartbeat(threading.Thread):
    """Renews the job's lease while it runs, so only a dead worker's job is ever claimed again."""

    def __init__(self, job_id: str, attempt: int | None = None) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.job_id = job_id
        self.attempt = attempt
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(jobs.lease().total_seconds() / 4):
            try:
                with session_scope() as s:
                    jobs.renew(s, job_id=self.job_id, attempt=self.attempt)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                log.warning("lease renewal of %s failed: %s", self.job_id, exc)

    def stop(self) -> None:
        self.stopped.set()


@contextmanager
def claim_held(job_id: str, attempt: int) -> Iterator[JobContext]:
    """While a claimed job runs here: remember its attempt and keep its lease alive."""
    _CLAIMS[job_id] = attempt
    heartbeat = Heartbeat(job_id, attempt)
    heartbeat.start()
    try:
        yield JobContext(job_id)
    finally:
        heartbeat.stop()
        _CLAIMS.pop(job_id, None)


def engine() -> Any:
    """workers.engine.api on this deployment's device, imported lazily: importing a job module (API process,
    tests) never imports torch."""
    from workers.engine import api

    api.use(get_settings().device)
    return api


def audit_limits() -> dict[str, float]:
    """The deployment's audit limits (LETHE_AUDIT_*), which a model's audit policy may override."""
    settings = get_settings()
    return {"max_acc_drop": settings.audit_max_acc_drop, "mia_auc_max": settings.audit_mia_auc_max,
            "mia_alpha": settings.audit_mia_alpha}


@dataclass(frozen=True)
class ModelInputs:
    """What every job reads of its model and its dataset (each kind's inputs extend it)."""

    model_id: str
    tenant_id: str
    arch: dict
    recipe: dict
    ds_uri: str
    shape: tuple[int, ...]
    n_classes: int

    @staticmethod
    def of(model: Model, ds: Dataset) -> dict[str, Any]:
        """These fields, for a subclass's constructor."""
        return {"model_id": model.id, "tenant_id": model.tenant_id, "arch": model.architecture,
                "recipe": model.recipe, "ds_uri": ds.uri, "shape": tuple(ds.input_shape), "n_classes": ds.n_classes}


def job_rows(s: Any, job_id: str) -> tuple[Job, Model, Dataset]:
    """A job's row, its model's and its dataset's."""
    job = s.get(Job, job_id)
    model = s.get(Model, job.model_id)
    return job, model, s.get(Dataset, model.dataset_id)
