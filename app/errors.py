"""One error hierarchy, answered in one shape: RFC 9457 problem details (`application/problem+json`).

Every error body holds `type` (a stable URI naming the kind of problem, listed in PROBLEM_TYPES and the README),
`title` (that kind in words), `status` (the HTTP status) and `detail` (this occurrence, in words), plus named
extension members where they help the caller fix the request: `errors` (validation: one {loc, msg, type} per
field), `unknown_point_ids`, `choices` (every accepted value), `suggestions` (the closest existing names),
`current` (the current version). The OpenDSR routes keep the error shape their specification mandates.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lethe.errors")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://lethe.dev/problems/"

# Every kind of problem: its slug (the type URI is TYPE_BASE + slug), status, title, and when it is answered (an
# indented line continues it). Documented in the README.
_KINDS = """
bad-request          | 400 | Bad request              | the request cannot be served as sent
unauthorized         | 401 | Unauthorized             | no bearer API key, or an unknown or revoked one
forbidden            | 403 | Forbidden                | the API key lacks the scope the operation needs
not-found            | 404 | Not found                | no such object (or route) for this tenant; `suggestions` names
                                                        close ones
method-not-allowed   | 405 | Method not allowed       | the route exists but not with this HTTP method
conflict             | 409 | Conflict                 | the object's state refuses the operation (exists, busy, not
                                                        current, ...)
idempotency-conflict | 409 | Idempotency-Key conflict | the Idempotency-Key was used for another request, or its first
                                                        use is unfinished
gone                 | 410 | Gone                     | the version was revoked and its weights purged
too-large            | 413 | Payload too large        | the body exceeds LETHE_MAX_BODY_MB or LETHE_MAX_UPLOAD_MB
validation           | 422 | Validation failed        | fields that do not match the schema; `errors` lists each
unprocessable        | 422 | Unprocessable request    | well-formed but refused input (unknown ids, bad files, ...)
rate-limited         | 429 | Too many requests        | the key's rate limit, or failed authentications; see Retry-After
internal             | 500 | Internal server error    | a fault of the server; the log has the details
unavailable          | 503 | Service unavailable      | a dependency is unavailable; retry after Retry-After
database-unavailable | 503 | Database unavailable     | the ledger database is unreachable
database-busy        | 503 | Database busy            | no database connection became free in time
"""


def _read(table: str) -> dict[str, tuple[int, str, str]]:
    """{slug: (status, title, when)} from the table's rows."""
    rows: list[list[str]] = []
    for line in table.strip("\n").splitlines():
        if line.startswith(" "):
            rows[-1][3] += " " + line.strip()
        else:
            rows.append([cell.strip() for cell in line.split("|")])
    return {slug: (int(status), title, when) for slug, status, title, when in rows}


# slug -> (status, title, when it is answered)
PROBLEM_TYPES: dict[str, tuple[int, str, str]] = _read(_KINDS)
RESERVED = frozenset({"type", "title", "status", "detail", "instance"})


def problem(slug: str, detail: str, *, status: int | None = None, **extensions: Any) -> dict[str, Any]:
    """The problem-details body of a kind in PROBLEM_TYPES."""
    default_status, title, _ = PROBLEM_TYPES[slug]
    return {"type": TYPE_BASE + slug, "title": title, "status": status or default_status, "detail": detail,
            **extensions}


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, body["status"], headers=headers, media_type=MEDIA_TYPE)


def closest(name: str, candidates: Iterable[str], *, n: int = 3) -> list[str]:
    """The existing names closest to a mistyped one (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def did_you_mean(suggestions: list[str]) -> str:
    return f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""


class LetheError(Exception):
    """A domain error: `detail` says what was wrong in words; keyword extensions become named members of the
    problem-details body (e.g. `Unprocessable("...", unknown_point_ids=[...])`)."""

    status_code = 400
    slug = "bad-request"

    def __init_subclass__(cls, *, status_code: int | None = None, slug: str | None = None, **kwargs: Any) -> None:
        """A kind of error names its status and problem type in its class line: `class Gone(LetheError,
        status_code=410, slug="gone")`."""
        super().__init_subclass__(**kwargs)
        if status_code is not None:
            cls.status_code = status_code
        if slug is not None:
            cls.slug = slug

    def __init__(self, detail: str | None = None, *, status_code: int | None = None, **extensions: Any) -> None:
        clash = RESERVED & extensions.keys()
        if clash:
            raise ValueError(f"extension members may not be named {sorted(clash)}")
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions
        if status_code is not None:
            self.status_code = status_code

    @property
    def name(self) -> str:
        return type(self).__name__

    def problem(self) -> dict[str, Any]:
        slug = self.slug if PROBLEM_TYPES[self.slug][0] == self.status_code else _slug_for(self.status_code)
        return problem(slug, self.detail or PROBLEM_TYPES[slug][1], status=self.status_code, **self.extensions)


class NotFound(LetheError, status_code=404, slug="not-found"):
    """No such object for this tenant (another tenant's objects are not found either)."""


class Unprocessable(LetheError, status_code=422, slug="unprocessable"):
    """Well-formed input the service refuses: unknown ids, a bad file, a value out of range."""


class Conflict(LetheError, status_code=409, slug="conflict"):
    """The object's state refuses the operation: it exists, is busy, or is not the current version."""


class Gone(LetheError, status_code=410, slug="gone"):
    """The version was revoked and its weights purged."""


class Unauthorized(LetheError, status_code=401, slug="unauthorized"):
    """No bearer API key, or an unknown or revoked one."""


class Forbidden(LetheError, status_code=403, slug="forbidden"):
    """The API key lacks the scope the operation needs."""


class TooLarge(LetheError, status_code=413, slug="too-large"):
    """The body exceeds LETHE_MAX_BODY_MB or LETHE_MAX_UPLOAD_MB."""


class RateLimited(LetheError, status_code=429, slug="rate-limited"):
    """Too many requests from this key or address; `retry_after` says when to try again."""

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.retry_after = retry_after


def _slug_for(status: int) -> str:
    """The generic kind of a status (a LetheError raised with another status_code than its class's)."""
    return next((slug for slug, (code, _, _) in PROBLEM_TYPES.items() if code == status),
                "bad-request" if status < 500 else "internal")


class ValidationItem(BaseModel):
    loc: list[str | int] = Field(description="where: 'body', 'query', 'path' or 'header', then the field path")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. 'missing', 'string_too_long'")
    choices: list[str] | None = Field(None, description="a field of a fixed set of names: every accepted one")
    suggestions: list[str] | None = Field(None, description="a field of a fixed set of names: the closest ones")


class Problem(BaseModel):
    """RFC 9457 problem details: every error answer of the API (except the OpenDSR routes, which answer in
    their specification's shape). Extension members appear where they apply."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"type": TYPE_BASE + "not-found", "title": "Not found", "status": 404,
         "detail": "no model 'digit'; did you mean 'digits'?", "suggestions": ["digits"]}]})

    type: str = Field(description="URI of the kind of problem: " + ", ".join(TYPE_BASE + s for s in PROBLEM_TYPES))
    title: str = Field(description="the kind of problem, in words")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what was wrong with this request, and how to fix it")
    errors: list[ValidationItem] | None = Field(None, description="validation failures, one per field")
    suggestions: list[str] | None = Field(None, description="existing names closest to a mistyped one")
    choices: list[str] | None = Field(None, description="every accepted value")
    current: str | int | None = Field(None, description="the current version")
    unknown_point_ids: list[str] | None = Field(None, description="point ids not in the model's dataset "
                                                                  "(at most 1000)")


def _choices(error: dict[str, Any]) -> list[str]:
    """The accepted values of a Literal or enum field, from pydantic's `expected` ("'a', 'b' or 'c'")."""
    if error.get("type") not in ("literal_error", "enum"):
        return []
    return re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))


def validation_problem(raw: Sequence[Any]) -> dict[str, Any]:
    """Pydantic's errors as one problem: each field and what was wrong with it; a mistyped name of a fixed set
    (a scorer, an algorithm, an optimizer) also gets `choices` and the closest ones as `suggestions`."""
    errors, parts, hints = [], [], {}
    for e in raw:
        item = {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        choices = _choices(e)
        suggestions = closest(str(e.get("input")), choices) if choices else []
        if choices:
            item.update(choices=choices, suggestions=suggestions)
            hints = hints or {"choices": choices, "suggestions": suggestions}
        errors.append(item)
        parts.append(".".join(str(p) for p in item["loc"]) + f": {item['msg']}{did_you_mean(suggestions)}")
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return problem("validation", f"{', '.join(parts[:3])}{more}" or "invalid request", errors=errors, **hints)


def install_handlers(app: FastAPI) -> None:
    """Answer every domain error, validation error, unknown route and lost database as problem details."""

    @app.exception_handler(LetheError)
    async def _lethe(_: Request, exc: LetheError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return problem_response(exc.problem(), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing's own answers (unknown path 404, 405): the same shape as everything else.
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, _slug_for(exc.status_code))
        detail = "no such route" if exc.status_code == 404 else str(exc.detail)
        return problem_response(problem(slug, detail, status=exc.status_code), dict(exc.headers or {}) or None)

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
        # Input the database refuses as a value (Postgres: NUL bytes in text, over-long strings): the caller's.
        log.info("database refused a value, answered 422: %s", exc.orig)
        return problem_response(problem(
            "unprocessable", f"a value cannot be stored: {str(exc.orig).splitlines()[0][:200]}"))

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error answered 503: %s", exc.orig)
        return problem_response(problem("database-unavailable", "the ledger database is unreachable; retry later"),
                                {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _fault(_: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback and re-raises after this answer; the caller gets the same shape, no internals.
        return problem_response(problem("internal", "the server failed on this request; it has been logged"))

    @app.exception_handler(PoolTimeout)
    async def _db_busy(_: Request, exc: PoolTimeout) -> JSONResponse:
        return problem_response(problem("database-busy", "no database connection became free in time; retry later"),
                                {"Retry-After": "2"})
