"""The embedded deployment's helpers: what `lethe serve` and `lethe demo` run beside themselves, so one command
needs no separately started worker (the background loops in threads, a `lethe worker` in a child process)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from app.background import Background
from app.settings import get_settings

STOP_SECONDS = 20  # a stopped worker finishes (or requeues) its task this long before it is killed


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when its parent dies, however it dies (uvicorn re-raises signals)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_worker(*, verbose: bool = False, stdout: int | None = None) -> subprocess.Popen:
    """A `lethe worker` process beside this one, ended when this process dies (stdout: where its own goes)."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--loglevel",
                             "INFO" if verbose else "WARNING", *([] if verbose else ["--quiet"])],
                            stdout=stdout, preexec_fn=_die_with_parent)


def stop_worker(child: subprocess.Popen) -> None:
    """SIGTERM (the worker finishes or requeues its task), then kill after STOP_SECONDS."""
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()


@contextmanager
def running(*, worker: bool = True, verbose: bool = False,
            worker_stdout: int | None = None) -> Iterator[subprocess.Popen | None]:
    """While inside: the background loops (outbox publisher, webhooks, erasure sweeps, requeues) and, with
    `worker`, one worker process (yielded, so a caller waiting on its jobs can tell when it died)."""
    child = start_worker(verbose=verbose or get_settings().verbose, stdout=worker_stdout) if worker else None
    background = Background(get_settings().relay_interval)
    background.start()
    try:
        yield child
    finally:
        background.stop()
        if child is not None:
            stop_worker(child)
