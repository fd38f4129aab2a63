"""The typed client against the real app (HTTP → DB → inline jobs): forget, wait, status, errors."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.client import Lethe, LetheAPIError
from app.main import create_app
from tests.factories import create_model, drain, upload_dataset


def test_client_forget_wait_status(sqlite_env: dict[str, str], admin_headers: dict[str, str]) -> None:
    with TestClient(create_app()) as http:
        upload_dataset(http, admin_headers, n=120, n_test=40)
        create_model(http, admin_headers)
        http.post("/models/toy/train", headers=admin_headers)
        drain()
        http.headers.update(admin_headers)
        lethe = Lethe.over(http)
        assert [m.ref for m in lethe.models()] == ["toy@1"]
        ids = [i["point_id"] for i in http.get("/models/toy/versions/1/influence?limit=500").json()["items"]]
        answer = lethe.forget("toy", point_ids=ids[-10:], reason="gdpr", requested_by="dpo")
        assert answer.job_id and sorted(answer.pending) == sorted(ids[-10:])
        assert lethe.status()["queue"] == {"queued": 1, "running": 0}
        drain()
        seen: list[str] = []
        job = lethe.wait(answer.job_id, on_progress=lambda j: seen.append(j.status))
        assert job.status == "completed" and seen[-1] == "completed"
        assert lethe.request(answer.request_id).status == "completed"
        status = lethe.status()
        assert status["models"][0]["ref"] == "toy@2" and status["unlearning_jobs"] == 1
        assert status["unlearning_seconds_total"] > 0 and status["ledger_ok"]
        with pytest.raises(LetheAPIError) as err:
            lethe.forget("tyo", point_ids=["x"], reason="r", requested_by="x")
        assert err.value.status == 404 and err.value.detail == "no model 'tyo'; did you mean 'toy'?"
        assert err.value.title == "Not found" and err.value.type == "https://lethe.dev/problems/not-found"
        assert err.value.problem["suggestions"] == ["toy"] and str(err.value).startswith("404: no model 'tyo'")
