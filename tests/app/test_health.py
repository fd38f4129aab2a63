from fastapi.testclient import TestClient

from app.main import create_app


def test_healthz_and_readyz(sqlite_env: dict[str, str]) -> None:
    with TestClient(create_app()) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.json()
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_served(sqlite_env: dict[str, str]) -> None:
    with TestClient(create_app()) as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert "/forget" in paths and "/ledger/verify" in paths
        assert client.get("/docs").status_code == 200
