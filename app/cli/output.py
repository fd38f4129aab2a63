"""What every command shares: exit codes, the consoles, --json output, one-line errors, the server's client."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from app.client import Lethe

# Exit codes: scripts branch on these (documented in `lethe --help` and the README).
OK, UNEXPECTED, USAGE, NOT_FOUND, REFUSED, JOB_FAILED, AUDIT_FAILED, UNREACHABLE, LEDGER_BROKEN = range(9)
EXIT_CODES = (
    "Exit codes: 0 done; 1 unexpected error; 2 usage or invalid input (the server's 400, 413, 422); "
    "3 not found (404, 410; forget: a subject the dataset holds no data for); "
    "4 refused (401 bad key, 403 scope, 409 conflict, 429 rate limit); "
    "5 the job or request failed or was cancelled (--wait); "
    "6 the audit failed or was inconclusive (--wait: the job failed on it, or the version was promoted without a "
    "pass, e.g. an inconclusive audit the policy accepts); "
    "7 server or database unreachable (connection refused, timeout, 5xx); "
    "8 the ledger does not verify (ledger verify, status). "
    "Errors are one line on stderr; --json puts machine-readable output on stdout."
)

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

URL = typer.Option(os.environ.get("LETHE_URL", "http://127.0.0.1:8000"), "--url", help="Lethe server")
KEY = typer.Option(os.environ.get("LETHE_API_KEY"), "--key", help="API key (default: LETHE_API_KEY or the demo key)")
JSON = typer.Option("--json", help="machine-readable output on stdout (JSON)")


def emit(value: Any) -> None:
    """--json output: one JSON document on stdout, nothing else there."""
    print(json.dumps(value, indent=2, default=str), flush=True)


def message(detail: Any) -> str:
    """One readable line from an error body of either shape: {"error", "detail"} (a string, an object with
    "message", or validation errors) or RFC 9457 problem details ("detail"/"title" and extension members)."""
    if isinstance(detail, str):
        text = detail.strip()
        if text[:1] in "{[":  # a JSON body the client did not parse (e.g. application/problem+json)
            try:
                return message(json.loads(text))
            except json.JSONDecodeError:
                pass
        return text
    if isinstance(detail, list):  # validation errors: [{loc, msg, type}]
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}" if isinstance(e, dict)
            else str(e) for e in detail)
    if isinstance(detail, dict):
        return _object_message(detail)
    return "" if detail is None else str(detail)


def _object_message(detail: dict[str, Any]) -> str:
    if isinstance(detail.get("error"), dict):  # OpenDSR's {"error": {"code", "message", ...}}
        return message(detail["error"].get("message"))
    main = next((detail[k] for k in ("detail", "message", "title") if detail.get(k)), None)
    if main is None and isinstance(detail.get("errors"), list):
        main = detail["errors"]
    text = message(main) if main is not None else json.dumps(detail)
    for key, values in detail.items():  # named lists worth a glance: unknown_point_ids, choices, ...
        if isinstance(values, list) and values and key not in ("detail", "errors") and \
                all(isinstance(v, str | int) for v in values):
            shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
            text += f" ({key.replace('_', ' ')}: {shown})"
    return text


def say_error(code: int, text: str) -> int:
    """Print `text` as one line on stderr; return `code` (for typer.Exit)."""
    print(f"error: {' '.join(str(text).split())}", file=sys.stderr, flush=True)
    return code


def api_key(key: str | None) -> str:
    """The key given, else the demo's admin key."""
    if key:
        return key
    from app.demo import admin_key

    return admin_key()


def client(url: str, key: str | None) -> Lethe:
    """The HTTP client every server-side command uses (tests replace it with one over their app)."""
    from app.client import Lethe

    return Lethe(url, api_key(key))
