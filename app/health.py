from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db import session_scope

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves requests (checks nothing else; see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database or the broker is down: `checks` names which",
                                        "content": {"application/json": {"example": {
                                            "status": "unavailable",
                                            "checks": {"database": "ok", "broker": "down: OperationalError"}}}}}})
def readyz() -> JSONResponse:
    """200 when the database and the broker answer, else 503 naming what is down."""
    checks: dict[str, str] = {}
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        from workers.celery_app import celery

        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"down: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
