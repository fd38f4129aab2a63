"""The deployment files, checked without a Docker engine: compose, Dockerfiles, Prometheus, Grafana, dashboard."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "unlearning-cost.json"
SERVICES = {"api", "worker", "migrate", "postgres", "redis", "prometheus", "grafana"}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "CMD", "ENTRYPOINT",
                "HEALTHCHECK", "LABEL", "VOLUME", "SHELL", "STOPSIGNAL", "ONBUILD"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and set(data["services"]) == SERVICES
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def interpolate(value: str) -> str:
    """What compose substitutes when the variable is unset (`:?` ones get a placeholder, as a .env would)."""
    def sub(m: re.Match[str]) -> str:
        op, arg = m.group(2) or "", m.group(3) or ""
        return "set-in-env" if "?" in op else arg
    return INTERPOLATION.sub(sub, value)


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            assert word.upper() in INSTRUCTIONS, f"{path.name}: unknown instruction {word!r}"
            out.append((word.upper(), rest.strip()))
    return out


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """volume name → target for the named (non-bind) mounts of a service."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if not source.startswith((".", "/")):
            out[source] = target
    return out


def binds(service: dict[str, Any]) -> dict[str, str]:
    return {s.split(":")[0]: s.split(":")[1] for s in service.get("volumes", []) if s.startswith(".")}


# ----------------------------------------------------------------------------- compose

def test_every_lethe_variable_is_a_setting_and_the_defaults_validate(compose: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import Settings

    fields = set(Settings.model_fields)
    texts = [COMPOSE.read_text(), *(p.read_text() for p in DOCKER.glob("*.Dockerfile"))]
    names = {n for text in texts for n in re.findall(r"\bLETHE_[A-Z0-9_]+", text)}
    assert names, "compose sets no LETHE_ variable"
    unknown = sorted(n for n in names if n.removeprefix("LETHE_").lower() not in fields)
    assert not unknown, f"not fields of app/settings.py: {unknown}"
    for svc in ("api", "worker", "migrate"):
        env = {k: interpolate(v) for k, v in env_of(compose["services"][svc]).items()}
        for key in [k for k in os.environ if k.startswith("LETHE_")]:
            monkeypatch.delenv(key)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        settings = Settings()  # the values compose passes when .env sets only the required ones
        assert settings.database_url and settings.database_url.startswith("postgresql+psycopg://")
        assert settings.broker_url == "redis://redis:6379/0"
        assert settings.secret_key, f"{svc}: the server secret must come from the environment, not per container"
        assert str(settings.artifacts) == "/var/lib/lethe/artifacts"


def test_dependencies_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["lethe", "migrate"] and services["migrate"]["restart"] == "no"
    assert "api" in services["prometheus"]["depends_on"]
    assert "prometheus" in services["grafana"]["depends_on"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, spec in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
        if name != "migrate":
            check = svc.get("healthcheck")
            assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert "healthcheck" not in services["migrate"]  # one-shot: its exit code is its health


def test_worker_is_scalable_and_gpu_reservation_is_documented(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:2] == ["lethe", "worker"]
    assert interpolate(env_of(worker)["LETHE_DEVICE"]) == "auto"  # the GPU when the container has one
    text = COMPOSE.read_text()
    gpu = text[text.index("  worker:"):text.index("  prometheus:")]
    for needle in ("driver: nvidia", "capabilities: [gpu]", "--scale worker="):
        assert needle in gpu or needle in text, needle
    assert "cuda" in worker["build"]["args"]["BASE_IMAGE"]


def test_ports_volumes_and_mounts_line_up(compose: dict[str, Any]) -> None:
    services, declared = compose["services"], set(compose["volumes"])
    used = {v for svc in services.values() for v in named_volumes(svc)}
    assert used == declared, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"
    assert {"db", "artifacts", "dashboards"} <= declared
    assert named_volumes(services["postgres"])["db"] == "/var/lib/postgresql/data"
    for name in ("api", "worker"):
        target = named_volumes(services[name])["artifacts"]
        assert target == interpolate(env_of(services[name])["LETHE_ARTIFACT_DIR"])
    assert named_volumes(services["grafana"])["dashboards"] == "/var/lib/grafana"
    for svc in services.values():
        for source in binds(svc):
            assert (ROOT / source).exists(), f"bind mount source {source} is missing"

    def published(svc: str) -> set[int]:
        return {int(str(p).split(":")[-1]) for p in services[svc].get("ports", [])}

    api_cmd = services["api"]["command"]
    assert published("api") == {int(api_cmd[api_cmd.index("--port") + 1])} == {8000}
    assert published("prometheus") == {9090} and published("grafana") == {3000}
    host_ports = [str(p).split(":")[0] for svc in services.values() for p in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))

    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    mount = binds(services["prometheus"])
    assert mount["./docker/prometheus.yml"] in " ".join(services["prometheus"]["command"])
    lethe = next(job for job in prom["scrape_configs"] if job["job_name"] == "lethe")
    assert lethe.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in lethe["static_configs"] for t in sc["targets"]] == ["api:8000"]


def test_metrics_route_is_mounted() -> None:
    from app.main import create_app

    assert "get" in create_app().openapi()["paths"]["/metrics"]


# ----------------------------------------------------------------------------- Dockerfiles

def test_dockerfiles_parse_and_build_what_compose_runs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker", "migrate"):
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert services["api"]["build"] == services["migrate"]["build"]

    api = dockerfile(DOCKER / "api.Dockerfile")
    worker = dockerfile(DOCKER / "worker.Dockerfile")
    for steps in (api, worker):
        assert any(i == "FROM" for i, _ in steps)
        for instr, args in steps:
            if instr == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists(), f"COPY source {source} is missing"
        assert any(i == "HEALTHCHECK" for i, _ in steps) and any(i == "CMD" for i, _ in steps)

    # api: no torch, the package itself (editable: alembic.ini and migrations/ stay beside app/)
    api_installs = [a for i, a in api if i == "RUN" and "pip install" in a]
    assert api_installs and all("worker" not in a and "torch" not in a for a in api_installs)
    assert ("EXPOSE", "8000") in api
    assert json.loads(next(a for i, a in api if i == "CMD")) == services["api"]["command"]

    # worker: a build arg chooses the (CUDA-capable by default) base; the worker extra; torch as pinned
    args_before_from = {a.split("=")[0]: a.split("=", 1)[1] if "=" in a else None
                        for i, a in worker[:next(n for n, (i, _) in enumerate(worker) if i == "FROM")] if i == "ARG"}
    assert "BASE_IMAGE" in args_before_from and "cuda" in args_before_from["BASE_IMAGE"]
    assert next(a for i, a in worker if i == "FROM") == "${BASE_IMAGE}"
    assert "BASE_IMAGE" in services["worker"]["build"]["args"]
    assert any(i == "RUN" and "pip install" in a and ".[worker]" in a for i, a in worker)
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    torch_pin = next(p for p in pins if p.startswith("torch"))
    torch_arg = next(a for i, a in worker if i == "ARG" and a.startswith("TORCH_VERSION="))
    assert torch_pin == f"torch=={torch_arg.split('=', 1)[1]}" == "torch==2.13.0"
    assert json.loads(next(a for i, a in worker if i == "CMD")) == services["worker"]["command"]


# ----------------------------------------------------------------------------- Grafana and the dashboard

def test_grafana_provisioning_points_at_the_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = binds(grafana)
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    dash_dir = mounts["./docker/grafana/dashboards"]
    providers = [p for f in (DOCKER / "grafana/provisioning/dashboards").glob("*.yml")
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert [p["options"]["path"] for p in providers] == [dash_dir]
    assert env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dash_dir}/{DASHBOARD.name}"

    sources = [d for f in (DOCKER / "grafana/provisioning/datasources").glob("*.yml")
               for d in yaml.safe_load(f.read_text())["datasources"]]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    host, port = re.match(r"http://([^:/]+):(\d+)", sources[0]["url"]).groups()
    assert host in compose["services"] and int(port) in {int(str(p).split(":")[-1])
                                                         for p in compose["services"][host]["ports"]}
    dash = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in [p, *p["targets"]]}
    assert uids == {sources[0]["uid"]}


def test_every_panel_queries_only_metrics_lethe_exports() -> None:
    from app.metrics import exported_names

    exported = exported_names()
    dash = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles)) and len({p["id"] for p in dash["panels"]}) == len(titles)
    for needed in ("Cost per deletion", "Seconds saved", "Free share", "Queue", "Audits", "MIA AUC",
                   "latency percentiles"):
        assert any(needed in t for t in titles), needed
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = set(re.findall(r"\b(lethe_[a-z0-9_]+)\b", target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} queries no Lethe metric"
            assert names <= exported, f"{panel['title']}: unknown metrics {sorted(names - exported)}"
            assert "$" not in target["expr"], "panels must evaluate as-is through Prometheus's HTTP API"
            used |= names
    assert any("histogram_quantile" in t["expr"] and "lethe_job_latency_seconds_bucket" in t["expr"]
               for p in dash["panels"] for t in p["targets"])
    # the dashboard shows every family (histograms through their buckets)
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families >= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported} - {"lethe_scrape_seconds"}


def test_no_password_ships_with_a_default(compose: dict[str, Any]) -> None:
    """Postgres's and Grafana's passwords come from .env; compose refuses to start without them (`:?`)."""
    text = COMPOSE.read_text()
    for var in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        uses = [m for m in INTERPOLATION.finditer(text) if m.group(1) == var]
        assert uses, f"{var} is not used"
        assert all(m.group(2) == ":?" and m.group(3) for m in uses), f"{var} must be required with a message"
    secrets = {k: v for svc in compose["services"].values() for k, v in env_of(svc).items()
               if re.search(r"PASSWORD|SECRET", k) or "@postgres" in v}
    assert secrets
    for key, value in secrets.items():
        assert all(m.group(2) == ":?" for m in INTERPOLATION.finditer(value)) and "$" in value, (key, value)
    assert "admin/admin" not in text and '"admin"' not in text
