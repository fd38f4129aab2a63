"""Test plumbing shared across suites: free ports, server processes, a webhook receiver."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

PROBLEM_BASE = "https://lethe.dev/problems/"
# Answers that are not Lethe's problem details by design: the OpenDSR spec's error shape, /readyz's status report.
OWN_ERROR_SHAPE = ("/opendsr/", "/readyz")


def assert_problem(resp: httpx.Response, status: int, *, kind: str | None = None, detail: str | None = None,
                   **members: Any) -> dict[str, Any]:
    """`resp` is an RFC 9457 problem-details answer with this status (and this kind, a detail containing
    `detail`, these extension members); returns its body."""
    assert resp.status_code == status, resp.text
    body = check_problem(resp)
    if kind is not None:
        assert body["type"] == PROBLEM_BASE + kind, body
    if detail is not None:
        assert detail in body["detail"], body
    for name, value in members.items():
        assert body.get(name) == value, (name, body)
    return body


def check_problem(resp: httpx.Response) -> dict[str, Any]:
    """The problem-details body of an error answer; fails the test on any other shape."""
    assert resp.headers.get("content-type", "").startswith("application/problem+json"), (resp.status_code,
                                                                                            resp.headers, resp.text)
    body = resp.json()
    assert isinstance(body, dict) and body.get("status") == resp.status_code, body
    assert isinstance(body.get("type"), str) and body["type"].startswith(PROBLEM_BASE), body
    assert isinstance(body.get("title"), str) and body["title"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert "error" not in body, body  # the old envelope is gone
    return body


def check_error_answer(resp: httpx.Response) -> None:
    """httpx response hook: every error answer of Lethe's own routes must be problem details."""
    if resp.status_code >= 400 and not any(p in resp.request.url.path for p in OWN_ERROR_SHAPE):
        resp.read()
        check_problem(resp)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, *, path: str = "/healthz", timeout: float = 120) -> None:
    """Poll url+path until 200; fail clearly if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited during start-up (code {proc.returncode})")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url}{path} did not answer 200 within {timeout} s")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy (returning it); fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s; returns once the process is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Receiver:
    """A local HTTP endpoint recording every POST (headers, raw body), answering `status`."""

    def __init__(self, status: int = 200, path: str = "/hook") -> None:
        self.status = status
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Trickler:
    """A webhook receiver that reads the request, then answers one byte of a never-ending header every `every`
    seconds: each read of the sender succeeds, so only an overall deadline ends the delivery."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.connections = 0
        self.stopped = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                line = b"HTTP/1.1 200 OK\r\nX-Slow: "
                i = 0
                while not self.stopped.wait(self.every):
                    conn.sendall(line[i % len(line):i % len(line) + 1])
                    i += 1
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
