"""One error hierarchy; one handler renders {"error", "detail"}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
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


def install_handlers(app: FastAPI) -> None:
    """Render every domain error, validation error and lost database as a clean JSON answer."""

    @app.exception_handler(LetheError)
    async def _lethe(_: Request, exc: LetheError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"error": exc.name, "detail": exc.detail}, exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return JSONResponse({"error": "ValidationError", "detail": detail}, 422)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error answered 503: %s", exc.orig)
        return JSONResponse({"error": "DatabaseUnavailable", "detail": "the ledger database is unreachable"}, 503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(PoolTimeout)
    async def _db_busy(_: Request, exc: PoolTimeout) -> JSONResponse:
        return JSONResponse({"error": "DatabaseBusy", "detail": "no database connection became free in time"}, 503,
                            headers={"Retry-After": "2"})
