"""The OpenAPI document's error answers: every status an operation can answer, with its body schema.

Statuses that follow from how a route is built are added here, from the route itself: 401 and 429 where a key is
checked, 403 where a scope is required, 404 where the path names an object, 409 and 422 where the Idempotency-Key
middleware serves a POST, 413 where there is a body, 503 where the database is read. Statuses that follow from
what a route does (a name in the body that may not exist, a state that refuses the call) are declared on the route
with `responses=problems(...)`. Every error answer is documented as `application/problem+json` (`Problem`),
except the OpenDSR routes', which keep their specification's error shape (`OpenDsrError`). The Idempotency-Key
header is listed on every POST its middleware serves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from app import examples
from app.auth import authenticate
from app.errors import MEDIA_TYPE, PROBLEM_TYPES, Problem, problem
from app.idempotency import MAX_KEY, own_handling
from app.settings import get_settings

# status -> (what it means here, the problem kind shown as its example)
STATUSES: dict[int, tuple[str, str]] = {
    400: ("The body cannot be parsed (malformed JSON or multipart)", "bad-request"),
    401: ("No bearer API key, or an unknown or revoked one", "unauthorized"),
    403: ("The API key lacks the scope this operation needs", "forbidden"),
    404: ("No such object for this tenant (close names in `suggestions`)", "not-found"),
    409: ("The object's state refuses the operation, or the Idempotency-Key was used for another request",
          "conflict"),
    410: ("The version was revoked: its weights were purged", "gone"),
    413: ("The body exceeds LETHE_MAX_BODY_MB (uploads: LETHE_MAX_UPLOAD_MB)", "too-large"),
    422: ("Invalid input: fields that do not match the schema (`errors`), or values refused as such", "validation"),
    429: ("Too many requests for this key, or too many failed authentications: see Retry-After", "rate-limited"),
    503: ("The database is unreachable or busy: retry after Retry-After", "database-unavailable"),
}
EXAMPLE_DETAILS = {
    "bad-request": "There was an error parsing the body",
    "unauthorized": "missing bearer API key (Authorization: Bearer <key>)",
    "forbidden": "this API key lacks the 'models' scope",
    "not-found": "no model 'digit'; did you mean 'digits'?",
    "conflict": "'digits@1' is not the current version (digits@4): deletions apply to what is served",
    "gone": "digits@1 was revoked: its weights were purged",
    "too-large": "request body exceeds 16 MiB (LETHE_MAX_BODY_MB)",
    "validation": "body.reason: Field required",
    "rate-limited": "rate limit of this API key exceeded (20/s, burst 40); retry in 0.5 s",
    "database-unavailable": "the ledger database is unreachable; retry later",
}
EXAMPLE_EXTENSIONS: dict[str, dict[str, Any]] = {
    "not-found": {"suggestions": ["digits"]},
    "conflict": {"current": "digits@4"},
    "validation": {"errors": [{"loc": ["body", "reason"], "msg": "Field required", "type": "missing"}]},
}
OPENDSR_ERROR: dict[str, Any] = {
    "title": "OpenDsrError", "type": "object", "required": ["error"],
    "description": "The OpenDSR specification's error shape (§7.6), answered by the /opendsr/v1 routes.",
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "integer"}, "message": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "domain": {"type": "string"}, "reason": {"type": "string"}, "message": {"type": "string"}}}}}}},
    "example": {"error": {"code": 404, "message": "no request 7d1e…", "errors": [
        {"domain": "Lethe", "reason": "NotFound", "message": "no request 7d1e…"}]}},
}
NO_DATABASE = ("/healthz", "/readyz", "/ledger/public-key", "/opendsr/v1/discovery", "/opendsr/v1/certificate.pem",
               "/opendsr/v1/status")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route's own error statuses; `document` gives each its description and schema."""
    return {status: {"description": STATUSES[status][0]} for status in statuses}


def extend(app: FastAPI, edit: Callable[[dict[str, Any]], None]) -> None:
    """Add a step to the app's OpenAPI document: `edit` changes the generated document in place, once (the
    document is cached on the app as FastAPI caches its own)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        edit(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _example(slug: str, status: int) -> dict[str, Any]:
    return problem(slug, EXAMPLE_DETAILS.get(slug, PROBLEM_TYPES[slug][2]), status=status,
                   **EXAMPLE_EXTENSIONS.get(slug, {}))


def _calls(dependant: Any) -> list[Any]:
    calls = []
    for dep in dependant.dependencies:
        calls.append(dep.call)
        calls.extend(_calls(dep))
    return calls


def _authenticated(route: APIRoute) -> bool:
    return authenticate in _calls(route.dependant)


def _implied(route: APIRoute, path: str, method: str) -> set[int]:
    """The statuses answered by the machinery around the route (auth, middleware, database, path lookups)."""
    calls = _calls(route.dependant)
    statuses: set[int] = set()
    if authenticate in calls:
        statuses |= {401, 429}
    if any(getattr(call, "scope", None) for call in calls):
        statuses.add(403)
    if "{" in path:
        statuses.add(404)
    if path.startswith("/opendsr/") and authenticate in calls:
        statuses.add(400)  # the spec's routes answer invalid input and refused states with 400
    if method == "POST":
        statuses |= {400, 413}  # 400: a body that cannot be parsed (malformed JSON or multipart)
        if not own_handling(path):
            statuses |= {409, 422}
    if path not in NO_DATABASE:
        statuses.add(503)
    return statuses


# What each operation does, in a reader's words (FastAPI's default is the function name: "Head", "Post Reference").
SUMMARIES: dict[tuple[str, str], str] = {
    ("get", "/healthz"): "Liveness: the process answers",
    ("get", "/readyz"): "Readiness: database, broker and artifact store reachable",
    ("post", "/datasets"): "Register a dataset (npz upload or by reference)",
    ("get", "/datasets"): "List the tenant's datasets",
    ("get", "/datasets/{name}"): "One dataset: size, splits, subjects, erasures",
    ("post", "/models"): "Register a model lineage (dataset, architecture, recipe, policy)",
    ("get", "/models"): "List the tenant's models",
    ("get", "/models/kinds"): "List the installed model kinds (architectures)",
    ("get", "/models/{name}"): "One model: current version, policy, reference pool status",
    ("post", "/models/{name}/versions"): "Upload a version's weights (safetensors)",
    ("get", "/models/{name}/versions"): "List a model's versions",
    ("post", "/models/{name}/train"): "Train the model's first version with its recipe (a job)",
    ("get", "/models/{name}/versions/{number}"): "One version: lineage, metrics, status",
    ("get", "/models/{name}/versions/{number}/weights"): "Download a version's weights",
    ("get", "/models/{name}/versions/{number}/influence"): "Page a version's self-influence scores",
    ("post", "/models/{name}/versions/{number}/influence"): "Score a version's training points (a job)",
    ("post", "/models/{name}/versions/{number}/calibrate"): "Retrain without the lowest-influence points (a job)",
    ("post", "/models/{name}/versions/{number}/reference"): "Train the lineage's reference pool (a job)",
    ("get", "/models/{name}/versions/{number}/calibration"): "A version's calibration result",
    ("get", "/models/{name}/versions/{number}/calibration.png"): "A version's calibration plot",
    ("post", "/forget"): "Forget points or subjects: free ones answered now, the rest unlearned by a job",
    ("get", "/requests"): "List forget requests",
    ("get", "/requests/{request_id}"): "One forget request: dispositions, job, status",
    ("get", "/requests/{request_id}/evidence"): "Page a request's per-point evidence and audits",
    ("get", "/requests/{request_id}/certificate"): "A request's signed deletion certificate",
    ("post", "/requests/{request_id}/cancel"): "Cancel a request whose job has not finished",
    ("get", "/jobs"): "List jobs",
    ("get", "/jobs/{job_id}"): "One job: phase, progress, result, error",
    ("get", "/ledger"): "Page the tamper-evident ledger",
    ("get", "/ledger/verify"): "Re-verify the ledger's hash chain",
    ("get", "/ledger/head"): "The ledger's newest entry and its hash",
    ("get", "/ledger/checkpoints"): "Signed checkpoints of the ledger's head",
    ("get", "/ledger/public-key"): "The Ed25519 key that signs checkpoints and certificates",
    ("get", "/keys"): "List the tenant's API keys",
    ("post", "/keys"): "Create an API key (shown once)",
    ("delete", "/keys/{key_id}"): "Revoke an API key",
    ("get", "/webhooks"): "List webhooks",
    ("post", "/webhooks"): "Register a webhook (its signing secret shown once)",
    ("get", "/webhooks/deliveries"): "Page webhook deliveries and their outcomes",
    ("delete", "/webhooks/{webhook_id}"): "Delete a webhook",
    ("post", "/webhooks/{webhook_id}/rotate"): "Rotate a webhook's signing secret",
    ("get", "/opendsr/v1/discovery"): "OpenDSR discovery document",
    ("get", "/opendsr/v1/certificate.pem"): "OpenDSR processor certificate (PEM)",
    ("get", "/opendsr/v1/status"): "OpenDSR processor status",
    ("post", "/opendsr/v1/opendsr_requests"): "Submit an OpenDSR erasure request",
    ("get", "/opendsr/v1/opendsr_requests/{subject_request_id}"): "Status of an OpenDSR request",
    ("delete", "/opendsr/v1/opendsr_requests/{subject_request_id}"): "Cancel an OpenDSR request",
    ("get", "/metrics"): "Prometheus metrics (text exposition format)",
}


# Where the answers of app/examples/routes.py's ROUTES are shown: (method, path, media type).
ROUTE_EXAMPLES: dict[str, tuple[str, str, str]] = {
    "healthz": ("get", "/healthz", "application/json"),
    "readyz": ("get", "/readyz", "application/json"),
    "kinds": ("get", "/models/kinds", "application/json"),
    "certificate": ("get", "/requests/{request_id}/certificate", "application/json"),
    "calibration": ("get", "/models/{name}/versions/{number}/calibration", "application/json"),
    "discovery": ("get", "/opendsr/v1/discovery", "application/json"),
    "opendsr_status": ("get", "/opendsr/v1/status", "application/json"),
    "metrics": ("get", "/metrics", "text/plain"),
    "public_key": ("get", "/ledger/public-key", "text/plain"),
}
PEM = "-----BEGIN CERTIFICATE-----\nMIIC…(base64 DER)…\n-----END CERTIFICATE-----\n"
# Multipart bodies have no named schema to carry an example.
FORM_EXAMPLES: dict[tuple[str, str], dict[str, str]] = {
    ("post", "/datasets"): {"name": "digits", "file": "(binary: digits.npz)"},
    ("post", "/models/{name}/versions"): {"weights": "(binary: model.safetensors)"},
}


def _with_examples(schema: dict[str, Any]) -> None:
    """Give every success answer an example: named schemas (and the pages of them) from app/examples/'s
    SCHEMAS, the other answers and the multipart bodies here."""
    schemas = schema["components"]["schemas"]
    for name, example in examples.SCHEMAS.items():
        schemas[name]["examples"] = [example]
    for name, component in schemas.items():
        item = name.removeprefix("Page_").removesuffix("_")
        if name.startswith("Page_") and item in examples.SCHEMAS:
            component["examples"] = [{"items": [examples.SCHEMAS[item]], "total": 1, "next": None}]
    paths = schema.get("paths", {})
    for key, (method, path, media) in ROUTE_EXAMPLES.items():
        content = paths[path][method]["responses"]["200"].setdefault("content", {})
        content.setdefault(media, {})["example"] = examples.ROUTES[key]
    for path in ("/opendsr/v1/certificate.pem", "/ledger/public-key"):
        for media, body in paths[path]["get"]["responses"]["200"].get("content", {}).items():
            if media == "application/x-pem-file":
                body["example"] = PEM if "certificate" in path else examples.ROUTES["public_key"]
    for (method, path), form in FORM_EXAMPLES.items():
        paths[path][method]["requestBody"]["content"]["multipart/form-data"]["example"] = form


def document(app: FastAPI) -> None:
    """Complete every operation's error answers (see the module docstring) in the OpenAPI document."""

    def edit(schema: dict[str, Any]) -> None:
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem_schema.pop("$defs", {}))
        schemas["Problem"] = problem_schema
        schemas["OpenDsrError"] = OPENDSR_ERROR
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        # included routers are resolved lazily (FastAPI >= 0.165): their routes' full paths come from the contexts
        routes = {(c.path_format, m): c.original_route for c in iter_route_contexts(app.routes)
                  if isinstance(c.original_route, APIRoute) for m in c.methods or ()}
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                if (method, path) in SUMMARIES:
                    op["summary"] = SUMMARIES[(method, path)]
                route = routes.get((path, method.upper()))
                responses = op.setdefault("responses", {})
                for status in _implied(route, path, method.upper()) if route else ():
                    responses.setdefault(str(status), {"description": STATUSES[status][0]})
                if route and not _authenticated(route):
                    op["security"] = []  # public: Swagger UI shows no lock and sends no key
                opendsr = path.startswith("/opendsr/")
                if opendsr and "422" in responses:  # the spec's routes answer invalid input with 400
                    responses.setdefault("400", {"description": STATUSES[400][0]})
                    del responses["422"]
                for code, response in responses.items():
                    if not code.isdigit() or int(code) < 400:
                        continue
                    status = int(code)
                    if status in STATUSES and response.get("description") in ("Validation Error", None, ""):
                        response["description"] = STATUSES[status][0]
                    if opendsr and status == 400:
                        response["description"] = "Invalid or refused request (the spec answers both with 400)"
                    if opendsr:
                        response["content"] = {"application/json": {
                            "schema": {"$ref": "#/components/schemas/OpenDsrError"}}}
                    elif path != "/readyz":  # /readyz's 503 is its own status report
                        slug = STATUSES.get(status, ("", "bad-request"))[1]
                        response["content"] = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"},
                                                            "example": _example(slug, status)}}
                op["responses"] = dict(sorted(responses.items()))
        _with_examples(schema)

    extend(app, edit)


def document_idempotency(app: FastAPI) -> None:
    """List the Idempotency-Key header on every POST the middleware serves (the OpenAPI document would
    otherwise show it only where a route declares it, POST /forget)."""
    param = {"name": "Idempotency-Key", "in": "header", "required": False,
             "description": f"Replays the first 2xx answer for {get_settings().idempotency_ttl_hours:g} h; "
                            "another request under the same key is a 409 (see README: Retries).",
             "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY}}

    def edit(schema: dict[str, Any]) -> None:
        for path, ops in schema.get("paths", {}).items():
            post = ops.get("post")
            if post is None or own_handling(path):
                continue
            params = post.setdefault("parameters", [])
            if not any(p.get("name", "").lower() == "idempotency-key" for p in params):
                params.append(param)

    extend(app, edit)
