"""OpenDSR processor routes under /opendsr/v1: discovery, certificate, requests (also by their OpenGDPR and
OpenCompliance names), status, cancellation. Errors follow the spec's shape (§7.6), not Lethe's."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.auth import Forgetter, Reader
from app.db import SessionDep
from app.errors import LetheError
from app.jobs.outbox import kick
from app.opendsr import callbacks, metrics, schemas, service
from app.opendsr.service import OpenDsrError
from app.settings import get_settings

# opendsr_requests is the current name; the older OpenGDPR name must keep working, and OpenCompliance is the newest.
NAMES = ("opendsr_requests", "opengdpr_requests", "opencompliance_requests")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def spec_error(code: int, message: str, errors: list[dict[str, str]], *, retry_after: int | None = None
               ) -> JSONResponse:
    headers = NO_STORE | ({"WWW-Authenticate": "Bearer"} if code == 401 else {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": {"code": code, "message": message, "errors": errors}}, code, headers=headers)


class SpecRoute(APIRoute):
    """Renders every error of these routes (auth, lookups, validation) in the OpenDSR error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = [{"domain": "Validation", "reason": str(e.get("type")),
                           "message": ".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg"))}
                          for e in exc.errors()]
                return spec_error(400, errors[0]["message"] if errors else "invalid request", errors)
            except OpenDsrError as exc:
                return spec_error(exc.status_code, str(exc.detail), exc.errors)
            except LetheError as exc:
                # Lethe's 409/422 are the spec's 400; 401, 403, 404 keep their codes.
                code = 400 if exc.status_code in (409, 422) else exc.status_code
                message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
                return spec_error(code, message, [{"domain": "Lethe", "reason": exc.name, "message": message}])
            except (OperationalError, PoolTimeout) as exc:
                # The database is away: the spec's 503 (§7.6 lists it), with Retry-After as Lethe's own routes.
                reason = "DatabaseBusy" if isinstance(exc, PoolTimeout) else "DatabaseUnavailable"
                message = "the ledger database is unreachable or busy; retry later"
                return spec_error(503, message, [{"domain": "Lethe", "reason": reason, "message": message}],
                                  retry_after=5)

        return route


router = APIRouter(prefix="/opendsr/v1", tags=["opendsr"], route_class=SpecRoute)
metrics.register()


async def raw_body(request: Request) -> bytes:
    """The request bytes as sent: encoded_request is their base64."""
    return await request.body()


def certificate_url(request: Request) -> str:
    base = (get_settings().opendsr_public_url or str(request.base_url)).rstrip("/")
    return f"{base}{router.prefix}/certificate.pem"


def signed(body: dict[str, Any], status: int, request: Request, background: BackgroundTasks | None = None) -> Response:
    """A JSON response whose exact bytes are signed in X-OpenDSR-Signature (and the legacy header names)."""
    content = callbacks.dumps(body)
    headers = callbacks.signed_headers(content)  # never named after the Host header
    return Response(content, status_code=status, media_type="application/json", headers=headers,
                    background=background)


@router.get("/discovery")
def discovery(request: Request) -> dict[str, Any]:
    """What this processor supports and where its signing certificate is (public)."""
    return schemas.discovery(certificate_url(request))


@router.get("/certificate.pem", response_class=Response,
            responses={200: {"content": {"application/x-pem-file": {}}}})
def certificate(request: Request) -> Response:
    """The X.509 certificate (PEM) whose key signs responses and callbacks (public)."""
    return Response(callbacks.current_signer().cert_pem, media_type="application/x-pem-file")


@router.get("/status")
def processor_status() -> dict[str, str]:
    """Liveness of the processor interface (the spec names the endpoint without defining its body)."""
    return {"api_version": schemas.API_VERSION, "status": "ok"}


def create_request(request: Request, caller: Forgetter, session: SessionDep, background: BackgroundTasks,
                   raw: Annotated[bytes, Depends(raw_body)]) -> Response:
    """Receive an erasure request: 201, signed; it fans out to a forget request per model holding the subject."""
    legacy = "/opengdpr_requests" in request.url.path
    try:
        body = service.submit(session, tenant_id=caller.tenant_id, raw=raw, legacy=legacy)
        session.commit()
    except IntegrityError:
        # The same subject_request_id committed concurrently: answer its response (or 400 if the body differs).
        session.rollback()
        body = service.replay(session, tenant_id=caller.tenant_id, raw=raw, legacy=legacy)
        session.rollback()
        if body is None:
            raise
    background.add_task(kick)  # publish the jobs (outbox) and wake the relay, which also sends callbacks
    return signed(body, 201, request, background)


def get_request(subject_request_id: str, request: Request, caller: Reader, session: SessionDep) -> Response:
    """The request's live status (pending | in_progress | completed | cancelled) and results_count, signed."""
    return signed(service.status(session, tenant_id=caller.tenant_id, subject_request_id=subject_request_id), 200,
                  request)


def cancel_request(subject_request_id: str, request: Request, caller: Forgetter, session: SessionDep,
                   background: BackgroundTasks) -> Response:
    """Cancel while pending: 202, signed."""
    body = service.cancel(session, tenant_id=caller.tenant_id, subject_request_id=subject_request_id)
    session.commit()
    background.add_task(kick)
    return signed(body, 202, request, background)


for _name in NAMES:
    _doc = _name == "opendsr_requests"
    router.add_api_route(f"/{_name}", create_request, methods=["POST"], status_code=201, include_in_schema=_doc,
                         response_class=Response, name=f"create_{_name}")
    router.add_api_route(f"/{_name}/{{subject_request_id}}", get_request, methods=["GET"], include_in_schema=_doc,
                         response_class=Response, name=f"get_{_name}")
    router.add_api_route(f"/{_name}/{{subject_request_id}}", cancel_request, methods=["DELETE"], status_code=202,
                         include_in_schema=_doc, response_class=Response, name=f"cancel_{_name}")
