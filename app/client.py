"""A small typed client for governance systems (and the CLI): httpx underneath, the API's own schemas on top.

    from app.client import Lethe
    with Lethe("http://127.0.0.1:8000", key) as lethe:
        answer = lethe.forget("digits", point_ids=["d0001"], reason="gdpr art. 17", requested_by="dpo")
        job = lethe.wait(answer.job_id) if answer.job_id else None

Errors come back as LetheAPIError with the HTTP status, the server's detail and its problem-details body.
POST /forget sends an Idempotency-Key (a fresh one unless given), so a retried call after a network error never
doubles a request.

Receivers of webhooks check `Lethe-Signature` with `verify_webhook(body, header, secret)` (a registered
webhook's secret) or `verify_callback(body, header, public_key_pem)` (a request's callback_url, signed with
the server's Ed25519 key from GET /ledger/public-key); both refuse timestamps more than `tolerance` seconds
(default 300) from the receiver's clock, so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import httpx

from app.forget.schemas import ForgetResponse, RequestRead
from app.jobs.enums import FINAL as JOB_FINAL
from app.jobs.schemas import JobRead
from app.ledger.schemas import LedgerVerify
from app.registry.schemas import ModelRead

FINAL = JOB_FINAL


TOLERANCE = 300  # seconds: the replay window receivers should allow (clock skew + delivery latency)


class WebhookSignatureError(ValueError):
    """A delivery whose Lethe-Signature is missing, stale (outside the tolerance) or does not match."""


def _signed_parts(header: str, *, tolerance: float, now: float | None) -> tuple[int, list[tuple[str, str]]]:
    try:
        items = [tuple(p.strip().split("=", 1)) for p in header.split(",") if p.strip()]
        timestamp = int(next(v for k, v in items if k == "t"))
    except (ValueError, StopIteration) as exc:
        raise WebhookSignatureError("malformed Lethe-Signature header") from exc
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookSignatureError(f"timestamp outside the {tolerance:g} s tolerance (a replay, or a wrong clock)")
    return timestamp, items  # type: ignore[return-value]


def verify_webhook(body: bytes, header: str, secret: str, *, tolerance: float = TOLERANCE,
                   now: float | None = None) -> dict[str, Any]:
    """Check a webhook delivery against the webhook's secret; returns the event. Any of the header's v1=
    signatures may match (during a rotation's grace period a delivery carries the new and the old one)."""
    timestamp, items = _signed_parts(header, tolerance=tolerance, now=now)
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(k == "v1" and hmac.compare_digest(expected, v) for k, v in items):
        raise WebhookSignatureError("no v1 signature matches this secret")
    return json.loads(body)


def verify_callback(body: bytes, header: str, public_key_pem: str | bytes, *, tolerance: float = TOLERANCE,
                    now: float | None = None) -> dict[str, Any]:
    """Check a callback_url delivery against the server's Ed25519 public key; returns the event."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    timestamp, items = _signed_parts(header, tolerance=tolerance, now=now)
    pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise WebhookSignatureError("the public key is not an Ed25519 key")
    for k, v in items:
        if k == "ed25519":
            try:
                key.verify(base64.b64decode(v), f"{timestamp}.".encode() + body)
                return json.loads(body)
            except (InvalidSignature, ValueError):
                pass
    raise WebhookSignatureError("no ed25519 signature matches this public key")


class LetheAPIError(Exception):
    """An HTTP error answer: `status`, `detail` (what was wrong, in words), `title` and `type` (the kind of
    problem) and `problem`, the whole RFC 9457 problem-details body with its extension members
    (`suggestions`, `choices`, `unknown_point_ids`, `errors`, ...). Answers that are not problem details
    (a proxy's HTML page, the OpenDSR routes' spec shape) keep their text or JSON in `problem`."""

    def __init__(self, status: int, detail: Any, *, problem: dict[str, Any] | None = None) -> None:
        self.status, self.detail = status, detail
        self.problem: dict[str, Any] = problem or {}
        self.title: str | None = self.problem.get("title")
        self.type: str | None = self.problem.get("type")
        super().__init__(f"{status}: {detail}")

    @classmethod
    def from_response(cls, resp: httpx.Response) -> LetheAPIError:
        try:
            body = resp.json() if resp.content else None
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            return cls(resp.status_code, body["detail"], problem=body)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):  # the OpenDSR routes' shape
            return cls(resp.status_code, str(body["error"].get("message")), problem=body)
        text = resp.text.strip() or resp.reason_phrase
        return cls(resp.status_code, text[:500], problem=body if isinstance(body, dict) else None)


class Lethe:
    """One server, one API key. Use as a context manager, or call close()."""

    def __init__(self, url: str, key: str, *, timeout: float = 30.0, retries: int = 3,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                                  transport=transport or httpx.HTTPTransport(retries=retries))

    @classmethod
    def over(cls, http: httpx.Client) -> Lethe:
        """Wrap a configured client (base URL and Authorization set), e.g. a FastAPI TestClient."""
        self = cls.__new__(cls)
        self._http = http
        return self

    def __enter__(self) -> Lethe:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._http.request(method, path, **kw)
        if resp.status_code >= 400:
            raise LetheAPIError.from_response(resp)
        return resp.json() if resp.content and resp.headers.get("content-type", "").startswith("application/json") \
            else resp.text

    def _pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self._call("GET", path, params={k: v for k, v in (params | {"cursor": cursor}).items()
                                                   if v is not None})
            yield from page["items"]
            cursor = page.get("next")
            if not cursor:
                return

    # --- forgetting -----------------------------------------------------------------------------------
    def forget(self, model: str, *, point_ids: list[str] | None = None, subject_ids: list[str] | None = None,
               reason: str, requested_by: str, algorithm: str | None = None, params: dict[str, Any] | None = None,
               callback_url: str | None = None, idempotency_key: str | None = None) -> ForgetResponse:
        """POST /forget: free points answered at once, the rest in a job (job_id)."""
        body = {"model": model, "point_ids": point_ids or [], "subject_ids": subject_ids or [], "reason": reason,
                "requested_by": requested_by, "algorithm": algorithm, "params": params, "callback_url": callback_url}
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return ForgetResponse.model_validate(self._call("POST", "/forget", headers=headers,
                                                        json={k: v for k, v in body.items() if v is not None}))

    def request(self, request_id: str) -> RequestRead:
        return RequestRead.model_validate(self._call("GET", f"/requests/{request_id}"))

    def certificate(self, request_id: str) -> dict[str, Any]:
        """The signed deletion certificate an auditor keeps."""
        return self._call("GET", f"/requests/{request_id}/certificate")

    def cancel(self, request_id: str) -> dict[str, Any]:
        return self._call("POST", f"/requests/{request_id}/cancel")

    # --- jobs -----------------------------------------------------------------------------------------
    def job(self, job_id: str) -> JobRead:
        return JobRead.model_validate(self._call("GET", f"/jobs/{job_id}"))

    def jobs(self, *, status: str | None = None, kind: str | None = None) -> Iterator[JobRead]:
        for item in self._pages("/jobs", status=status, kind=kind):
            yield JobRead.model_validate(item)

    def wait(self, job_id: str, *, poll: float = 0.5, timeout: float | None = None,
             on_progress: Callable[[JobRead], None] | None = None) -> JobRead:
        """Poll a job until it ends; on_progress sees every state (a progress bar, a log line)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job.status in FINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(poll)

    # --- registry and ledger --------------------------------------------------------------------------
    def models(self) -> list[ModelRead]:
        return [ModelRead.model_validate(m) for m in self._pages("/models")]

    def verify_ledger(self) -> LedgerVerify:
        return LedgerVerify.model_validate(self._call("GET", "/ledger/verify"))

    def head(self) -> dict[str, Any]:
        """The chain head and its signed checkpoint: keep it outside Lethe."""
        return self._call("GET", "/ledger/head")

    def ledger(self) -> Iterator[dict[str, Any]]:
        """Every entry of the caller's chain, in order."""
        yield from self._pages("/ledger", limit=1000)

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every signed checkpoint of the caller's chain (the current head is signed first)."""
        return list(self._pages("/ledger/checkpoints", limit=1000))

    def public_key(self) -> str:
        """The server's Ed25519 public key (PEM); better compared with a copy obtained out of band."""
        return self._call("GET", "/ledger/public-key")

    def status(self) -> dict[str, Any]:
        """What `lethe status` shows: models and their current versions, the queue, and what deletions cost."""
        models = self.models()
        active = {s: list(self.jobs(status=s)) for s in ("queued", "running")}
        done = list(self.jobs(status="completed", kind="unlearn"))
        seconds = [sum(v for v in (j.timings or {}).values() if isinstance(v, int | float)) for j in done]
        return {
            "models": [{"name": m.name, "ref": m.ref, "current": m.current} for m in models],
            "queue": {s: len(v) for s, v in active.items()},
            "running": [{"job_id": j.id, "kind": j.kind, "phase": j.phase, "progress": j.progress}
                        for j in active["running"]],
            "unlearning_jobs": len(done),
            "unlearning_seconds_total": round(sum(seconds), 3),
            "unlearning_seconds_mean": round(sum(seconds) / len(seconds), 3) if seconds else None,
            "ledger_ok": self.verify_ledger().ok,
        }
