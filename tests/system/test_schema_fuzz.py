"""Schemathesis against the OpenAPI schema, every operation, through the ASGI app with the bootstrap admin key:
no 5xx, every answered status is documented for its operation, and every documented response conforms
to its schema. Bounded (examples per operation) for CI.

Drives Schemathesis' Python API (`as_strategy` + Hypothesis) rather than its pytest plugin, which does not run
on pytest 9.2 (it reads the removed `Function._nodeid`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

from tests.conftest import BOOTSTRAP  # noqa: E402
from tests.factories import create_model, upload_dataset, upload_version  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 10}  # per operation; plus 8 on seeded objects
AUTH = {"Authorization": f"Bearer {BOOTSTRAP}"}


class _NoNetwork:
    status_code = 204


@pytest.fixture
def api(lethe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, dict[str, str]]]:
    """The schema of the app on this test's database, seeded with dataset, model and version `toy`."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import get_settings

    # Fuzzed callback URLs never reach the network: no DNS at registration, no POST at delivery.
    monkeypatch.setenv("LETHE_WEBHOOKS_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("LETHE_RATE_LIMIT_PER_SECOND", "0")
    monkeypatch.setattr("httpx.post", lambda *a, **k: _NoNetwork())
    get_settings.cache_clear()
    app = create_app()
    with TestClient(app) as client:
        upload_dataset(client, AUTH)
        create_model(client, AUTH)
        version = upload_version(client, AUTH)
        assert version.status_code == 201
        fr = client.post("/forget", headers=AUTH, json={"model": "toy", "point_ids": ["p0001"], "reason": "fuzz",
                                                        "requested_by": "fuzz"}).json()
    seeded = {"name": "toy", "number": "1", "job_id": fr["job_id"], "request_id": fr["request_id"]}
    yield schemathesis.openapi.from_asgi("/openapi.json", app), seeded


def _run(strategy: Any, examples: int, statuses: Counter[int]) -> None:
    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error, response_schema_conformance,
                                                                  status_code_conformance])
        statuses[response.status_code] += 1

    run()


def test_api_conforms_and_never_5xx(api: tuple[Any, dict[str, str]]) -> None:
    schema, seeded = api
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) > 20
    for op in operations:
        params = set(re.findall(r"\{(\w+)\}", op.path))
        runs = [(op.as_strategy(generation_mode=mode), n) for mode, n in EXAMPLES.items()]
        if params and params <= seeded.keys():
            runs.append((op.as_strategy(path_parameters={p: seeded[p] for p in params}), 8))
        for strategy, n in runs:
            try:
                _run(strategy, n, statuses)
            except Unsatisfiable:
                continue  # negative mode: nothing in this operation's schema can be made invalid
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - FailureGroup is a BaseExceptionGroup; report them all
                failures.append(f"{op.method.upper()} {op.path}: {type(exc).__name__}: {str(exc)[:1500]}")
                break
    assert not failures, "\n\n".join(failures)
    # the fuzzing reached the handlers: successes and refusals alike, and nothing else than these
    ok = sum(n for code, n in statuses.items() if code < 300)
    assert sum(statuses.values()) > 5 * len(operations) and ok > len(operations), statuses
    assert all(code < 500 for code in statuses), statuses
