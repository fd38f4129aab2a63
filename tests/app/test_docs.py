"""/docs and /redoc work offline: every asset they load comes from Lethe itself, and the API key scheme is
declared so Swagger UI offers 'Authorize'."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.openapi import SUMMARIES


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_every_asset_from_lethe(client: TestClient, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    urls += re.findall(r"""url:\\s*['"]([^'"]+)['"]""", html.text)  # Swagger UI's OpenAPI document
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        full = urljoin(f"http://testserver{page}", url)
        assert urlsplit(full).netloc == "testserver", f"{page} loads {url} from another origin"
        assert client.get(urlsplit(full).path).status_code == 200, url
    assert "cdn" not in html.text.lower() and "googleapis" not in html.text


def test_openapi_declares_the_bearer_scheme(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"][
            "description"]}
    assert doc["security"] == [{"bearer": []}]


# Operations that can answer no error at all: liveness, the public key and the OpenDSR processor's descriptors.
NO_ERRORS = {("get", "/healthz"), ("get", "/ledger/public-key"), ("get", "/opendsr/v1/discovery"),
             ("get", "/opendsr/v1/certificate.pem"),
             ("get", "/opendsr/v1/status")}
PUBLIC = NO_ERRORS | {("get", "/readyz"), ("get", "/metrics")}


def test_every_operation_is_described_and_documents_its_errors(client: TestClient) -> None:
    """Summary, description and error statuses on every operation; error bodies documented as problem details
    (the OpenDSR routes: their spec's shape); the statuses implied by auth, path lookups and bodies present."""
    doc = client.get("/openapi.json").json()
    problems: list[str] = []
    operations = [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    assert len(operations) > 40
    for method, path, op in operations:
        where = f"{method.upper()} {path}"
        for field in ("summary", "description"):
            if not (op.get(field) or "").strip():
                problems.append(f"{where}: no {field}")
        if (method, path) not in SUMMARIES:
            problems.append(f"{where}: no written summary in app/openapi.py SUMMARIES")
        errors = {int(c) for c in op["responses"] if c.isdigit() and int(c) >= 400}
        if not errors and (method, path) not in NO_ERRORS:
            problems.append(f"{where}: documents no error status")
        want: set[int] = set()
        if (method, path) not in PUBLIC:
            want |= {401, 403, 429, 503}
            if op.get("security") == []:
                problems.append(f"{where}: needs a key but is documented as public")
        elif op.get("security") != []:
            problems.append(f"{where}: public but documented as needing a key")
        if "{" in path:
            want.add(404)
        if method == "post":
            want |= {400, 413} if path.startswith("/opendsr/") else {400, 413, 422}
        if missing := want - errors:
            problems.append(f"{where}: undocumented {sorted(missing)}")
        for code in errors:
            content = op["responses"][str(code)].get("content", {})
            if path.startswith("/opendsr/"):  # also 503: the spec lists it, in its own shape
                ok = content.get("application/json", {}).get("schema") == {"$ref": "#/components/schemas/OpenDsrError"}
            elif path == "/readyz":
                ok = "application/json" in content
            else:
                media = content.get("application/problem+json", {})
                ok = media.get("schema") == {"$ref": "#/components/schemas/Problem"} and \
                    media["example"]["status"] == code and set(content) == {"application/problem+json"}
            if not ok:
                problems.append(f"{where}: {code} body not documented in its error shape: {content}")
    assert not problems, "\n".join(problems)
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert {"errors", "suggestions", "choices", "current", "unknown_point_ids"} <= set(problem["properties"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_unknown_routes_and_methods_answer_problem_details(client: TestClient) -> None:
    from tests.support import assert_problem

    assert_problem(client.get("/nope"), 404, kind="not-found", detail="no such route")
    assert_problem(client.put("/models"), 405, kind="method-not-allowed")


def test_readme_lists_every_problem_type() -> None:
    from pathlib import Path

    from app.errors import PROBLEM_TYPES

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert [slug for slug in PROBLEM_TYPES if f"| `{slug}` |" not in readme] == []


def test_every_json_request_body_has_a_valid_example(client: TestClient) -> None:
    from app.datasets.schemas import DatasetByReference
    from app.forget.schemas import ForgetCreate
    from app.registry.schemas import CalibrateCreate, InfluenceCreate, ModelCreate, TrainCreate
    from app.tenants.schemas import KeyCreate
    from app.webhooks.router import WebhookCreate

    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    lacking = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None or path.startswith("/opendsr/"):
                continue
            schema = body["schema"]
            for branch in schema.get("anyOf", [schema]):  # optional bodies: the model or null
                schema = schemas[branch["$ref"].rsplit("/", 1)[1]] if "$ref" in branch else branch
                if "examples" in schema or "example" in body:
                    break
            else:
                lacking.append(f"{method.upper()} {path}")
    assert not lacking, lacking
    for model in (DatasetByReference, ForgetCreate, CalibrateCreate, InfluenceCreate, ModelCreate, TrainCreate,
                  KeyCreate, WebhookCreate):
        for example in model.model_json_schema()["examples"]:
            model.model_validate(example)  # the documented example is a valid request


def _documented_example(doc: dict[str, Any], content: dict[str, Any]) -> Any:
    """The example a reader of the document sees for one answer: its own, or its schema's (first of anyOf)."""
    if "example" in content:
        return content["example"]
    schema = content.get("schema") or {}
    for branch in schema.get("anyOf", [schema]):
        named = doc["components"]["schemas"][branch["$ref"].rsplit("/", 1)[1]] if "$ref" in branch else branch
        if named.get("examples"):
            return named["examples"][0]
    return None


def test_every_success_answer_has_an_example_valid_for_its_model(client: TestClient) -> None:
    from fastapi.routing import APIRoute, iter_route_contexts
    from pydantic import TypeAdapter

    doc = client.get("/openapi.json").json()
    models = {(c.path_format, m.lower()): c.original_route.response_model for c in iter_route_contexts(
        client.app.routes) if isinstance(c.original_route, APIRoute) for m in c.methods or ()}
    lacking, checked = [], 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, answer in op["responses"].items():
                for media, content in (answer.get("content") or {}).items() if code.startswith("2") else ():
                    example = _documented_example(doc, content)
                    if example is None:
                        lacking.append(f"{method.upper()} {path} {code} {media}")
                    elif media == "application/json" and models.get((path, method)) is not None:
                        TypeAdapter(models[(path, method)]).validate_python(example)  # a real answer's shape
                        checked += 1
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                if _documented_example(doc, content) is None:
                    lacking.append(f"{method.upper()} {path} body {media}")
    assert not lacking, lacking
    assert checked >= 30, checked
