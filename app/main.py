"""create_app(): routers, error handlers, bootstrap key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import health, metrics
from app.auth import TokenBuckets
from app.datasets.router import router as datasets_router
from app.db import session_scope
from app.errors import install_handlers
from app.forget.router import router as forget_router
from app.idempotency import Idempotency
from app.jobs.router import router as jobs_router
from app.ledger.router import router as ledger_router
from app.openapi import document as document_errors
from app.openapi import document_idempotency
from app.openapi import extend as extend_openapi
from app.opendsr.router import router as opendsr_router
from app.registry.router import router as models_router
from app.settings import get_settings
from app.tenants import service as tenants
from app.tenants.router import router as keys_router
from app.uploads import BodyLimit
from app.webhooks.router import router as webhooks_router


def bootstrap() -> None:
    """Create the LETHE_BOOTSTRAP_KEY admin key if it is set and absent."""
    key = get_settings().bootstrap_key
    if key:
        with session_scope() as session:
            tenants.ensure_bootstrap_key(session, key=key)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    bootstrap()
    yield


def _bearer(schema: dict[str, Any]) -> None:
    """Declare the API-key bearer scheme, so /docs offers 'Authorize' and every operation shows it needs a key."""
    schema.setdefault("components", {})["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "An API key (`lethe_…`): `make run` prints the admin key, `lethe keys` makes more."}}
    schema["security"] = [{"bearer": []}]


def create_app() -> FastAPI:
    # Swagger UI and ReDoc from assets shipped in the package: deployments are often offline or behind a proxy
    app = FastAPIOffline(title="Lethe", version="0.1.0", lifespan=lifespan,
                         description="Remove training data from deployed PyTorch models, with audits and a ledger.")
    install_handlers(app)
    app.state.auth_failures = TokenBuckets()  # wrong keys per client address, in this process's memory
    app.add_middleware(Idempotency)  # inside BodyLimit: replays and claims see only bodies within the limits
    app.add_middleware(BodyLimit)  # 413 for bodies over LETHE_MAX_BODY_MB / LETHE_MAX_UPLOAD_MB
    for router in (health.router, datasets_router, models_router, forget_router, jobs_router, ledger_router,
                   keys_router, webhooks_router, opendsr_router, metrics.router):
        app.include_router(router)
    document_idempotency(app)  # after the routes: the OpenAPI document lists Idempotency-Key on every POST
    document_errors(app)  # every error status each operation can answer, as problem details
    extend_openapi(app, _bearer)
    return app
