"""One error hierarchy; one handler renders {"error", "detail"}."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger("lethe.errors")


class LetheError(Exception):
    status_code = 400

    def __init__(self, detail: Any = None, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code

    @property
    def name(self) -> str:
        return type(self).__name__


class NotFound(LetheError):
    status_code = 404


class Unprocessable(LetheError):
    status_code = 422


class Conflict(LetheError):
    status_code = 409


class Gone(LetheError):
    status_code = 410


class Unauthorized(LetheError):
    status_code = 401


class Forbidden(LetheError):
    status_code = 403


class TooLarge(LetheError):
    status_code = 413


class Unavailable(LetheError):
    status_code = 503


class RateLimited(LetheError):
    status_code = 429

    def __init__(self, detail: Any = None, *, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error", "type": "object", "required": ["error"],
    "description": "Every error: the error's name and a detail (a message, or for ValidationError a list of "
                   "{loc, msg, type}).",
    "properties": {"error": {"type": "string", "title": "Error"}, "detail": {"title": "Detail"}},
}


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document describe the error envelope actually sent: FastAPI's default 422 schema
    (HTTPValidationError, `{"detail": [...]}`) becomes `Error` (`{"error", "detail"}`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        text = json.dumps(generate()).replace('"#/components/schemas/HTTPValidationError"',
                                              '"#/components/schemas/Error"')
        schema = json.loads(text)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas["Error"] = ERROR_SCHEMA
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_handlers(app: FastAPI) -> None:
    """Render every domain error, validation error and lost database as a clean JSON answer."""
    document_errors(app)

    @app.exception_handler(LetheError)
    async def _lethe(_: Request, exc: LetheError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse({"error": exc.name, "detail": exc.detail}, exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return JSONResponse({"error": "ValidationError", "detail": detail}, 422)

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
        # Input the database refuses as a value (Postgres: NUL bytes in text, over-long strings): the caller's.
        log.info("database refused a value, answered 422: %s", exc.orig)
        return JSONResponse({"error": "Unprocessable",
                             "detail": f"a value cannot be stored: {str(exc.orig).splitlines()[0][:200]}"}, 422)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error answered 503: %s", exc.orig)
        return JSONResponse({"error": "DatabaseUnavailable", "detail": "the ledger database is unreachable"}, 503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(PoolTimeout)
    async def _db_busy(_: Request, exc: PoolTimeout) -> JSONResponse:
        return JSONResponse({"error": "DatabaseBusy", "detail": "no database connection became free in time"}, 503,
                            headers={"Retry-After": "2"})
