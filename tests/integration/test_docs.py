"""/docs and /redoc work offline: every asset they load comes from Lethe itself, and the API key scheme is
declared so Swagger UI offers 'Authorize'."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(sqlite_env: dict[str, str]) -> TestClient:
    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


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
