"""Fault-test helpers: a private redis-server, a TCP proxy in front of Postgres that a test cuts and
restores, and `lethe serve` / `lethe worker` subprocesses. Nothing here touches the machine's own services."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, stop, wait_until


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateRedis:
    """A throw-away `redis-server` on a free port (no persistence), stopped and restarted on that same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed: broker fault tests need a private Redis they can stop")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _port_open(self.port), 10, f"redis-server on port {self.port}")
        return self

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted (by the kernel) but nothing is ever answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        wait_until(lambda: not _port_open(self.port), 10, f"redis on port {self.port} to go away")


class TcpProxy:
    """A threaded TCP proxy 127.0.0.1:port → upstream. cut() closes the listener and every open connection
    (clients see refused and reset connections, as when the database host goes away); restore() listens again
    on the same port. freeze() keeps every socket open but forwards nothing (a stalled network or server:
    connections accepted, no answers); thaw() ends that."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.port = upstream, free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._frozen = threading.Event()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()
        return self

    restore = start

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:  # clients that connected during the freeze long gave up
            _close(sock)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
            held, self._held = self._held, []
        if listener is not None:
            _close(listener)
        for conn in [*conns, *held]:
            _close(conn)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            if self._frozen.is_set():
                with self._lock:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), name="proxy-pump", daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                if self._frozen.is_set():
                    time.sleep(0.05)
                    with self._lock:
                        if a not in self._conns:
                            return
                    continue
                readable, _, _ = select.select([a, b], [], [], 1.0)
                with self._lock:
                    if a not in self._conns:
                        return
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        return
                    peers[src].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns -= {a, b}
            _close(a)
            _close(b)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def lethe(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m app.cli <args>` with this environment; output to a log file that a failing test prints."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[2])


class Server:
    """`lethe serve --no-worker` (API + outbox relay) on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.port = env, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.proc = lethe(["serve", "--no-worker", "--port", str(self.port)], self.env, self.log)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"lethe serve exited:\n{tail(self.log)}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 90, "lethe serve to answer /healthz", interval=0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class Workers:
    """`lethe worker` processes of one test: started, SIGKILLed, and all ended at teardown."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc = lethe(["worker", "--loglevel", "WARNING"], self.env, self.log)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        """End them all; a test's workers need no warm shutdown (their broker is private and goes too)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=20)


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment (the test's LETHE_* settings) plus `extra`."""
    return {**os.environ, **extra}
