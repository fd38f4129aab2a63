"""Any failure of any command, at any depth (`lethe keys create`, ...), ends as one line on stderr and an exit
code: no tracebacks (LETHE_DEBUG=1 lets unexpected ones through)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from app.cli.output import NOT_FOUND, OK, REFUSED, UNEXPECTED, UNREACHABLE, USAGE, message, say_error


def code_for(status: int) -> int:
    """The exit code of an HTTP error status."""
    if status in (404, 410):
        return NOT_FOUND
    if status in (401, 403, 409, 429):
        return REFUSED
    return UNREACHABLE if status >= 500 else USAGE


def error_code(exc: BaseException) -> int:
    """Print `exc` as one line on stderr; the exit code it means."""
    import httpx
    from sqlalchemy.exc import SQLAlchemyError

    from app.client import LetheAPIError
    from app.errors import LetheError

    if isinstance(exc, LetheAPIError):
        said = getattr(exc, "message", None)
        return say_error(code_for(exc.status), f"{exc.status} "
                         f"{said if isinstance(said, str) and said else message(exc.detail)}")
    if isinstance(exc, httpx.TransportError):
        where = getattr(getattr(exc, "request", None), "url", None) if _has_request(exc) else None
        return say_error(UNREACHABLE, f"cannot reach the Lethe server{f' at {where}' if where else ''}: "
                         f"{exc or type(exc).__name__} (is `lethe serve` running? --url or LETHE_URL)")
    if isinstance(exc, LetheError):
        return say_error(code_for(exc.status_code), message(exc.detail))
    if isinstance(exc, SQLAlchemyError):
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return say_error(UNREACHABLE, f"database: {first} (is it reachable and migrated: `lethe migrate`?)")
    if type(exc).__name__ == "NoArgsIsHelpError":  # `lethe keys`: the help was already printed
        return USAGE
    if _is_click_error(exc):  # usage errors (exit 2) and typer.BadParameter: click's, vendored by typer
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return say_error(int(getattr(exc, "exit_code", USAGE)), exc.format_message() + hint)  # type: ignore[attr-defined]
    if isinstance(exc, typer.Abort):
        return say_error(UNEXPECTED, "aborted")
    return say_error(UNEXPECTED, f"{type(exc).__name__}: {exc} (LETHE_DEBUG=1 shows the traceback)")


def _is_click_error(exc: BaseException) -> bool:
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def _has_request(exc: BaseException) -> bool:
    try:
        return getattr(exc, "request", None) is not None  # httpx raises RuntimeError when it has none
    except RuntimeError:
        return False


class LetheGroup(TyperGroup):
    """The root command: runs a command and turns whatever it raises into its exit code."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
            code = rv if isinstance(rv, int) else OK  # typer answers an Exit in non-standalone mode with its code
        except Exception as exc:  # noqa: BLE001  (click's own exceptions included: usage errors, Abort)
            if os.environ.get("LETHE_DEBUG") and not _is_click_error(exc):
                raise
            code = error_code(exc)
        if standalone_mode:
            sys.exit(code)
        return code
