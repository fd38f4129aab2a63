"""`lethe demo`: the digits dataset and model, trained and scored through real jobs (idempotent)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from sqlalchemy import select

from app import artifacts
from app.datasets import service as datasets
from app.datasets.tables import Dataset
from app.db import session_scope
from app.evidence import service as evidence
from app.evidence.tables import ReferencePool
from app.jobs.tables import Job
from app.keys import private_file
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.schemas import Architecture, ModelCreate, Recipe
from app.registry.tables import Model
from app.settings import get_settings
from app.tenants import service as tenants

DEMO = "digits"


def admin_key() -> str:
    """LETHE_BOOTSTRAP_KEY, else a key generated once and kept (0600) in the data dir."""
    settings = get_settings()
    if settings.bootstrap_key:
        key = settings.bootstrap_key
    else:
        from app.auth import generate_key

        key = private_file(settings.resolved_data_dir / "admin.key", lambda: generate_key().encode()).decode().strip()
    with session_scope() as s:
        tenants.ensure_bootstrap_key(s, key=key)
    return key


def digits_npz(seed: int = 0, test_fraction: float = 0.2) -> bytes:
    """scikit-learn's bundled digits: x in [0, 1], 20% held out, ids d0000… (training order), 5 per subject."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    ids = np.array([f"d{k:04d}" for k in range(len(train))])
    subjects = np.array([f"subject-{i // 5:03d}" for i in range(len(train))])
    buf = io.BytesIO()
    np.savez(buf, x=x[train], y=y[train], ids=ids, subjects=subjects, x_test=x[test], y_test=y[test])
    return buf.getvalue()


def run_demo(*, echo=print) -> dict[str, str]:  # noqa: ANN001
    """Register dataset and model `digits` and train + score version 1, unless already there."""
    from app import migrate
    from workers.jobs import runner

    migrate.upgrade()
    key = admin_key()
    with session_scope() as s:
        tenant_id = tenants.get_or_create_tenant(s, name=tenants.DEFAULT_TENANT).id
        ds = s.scalar(select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == DEMO))
        if ds is None:
            uri = f"datasets/{DEMO}-demo.npz"
            path, sha, _ = artifacts.write_chunks(uri, [digits_npz()])
            ds = datasets.register(s, tenant_id=tenant_id, name=DEMO, uri=uri, sha256=sha)
            echo(f"registered dataset '{DEMO}' ({ds.n_points} points, {ds.n_test} test)")
        model = s.scalar(select(Model).where(Model.tenant_id == tenant_id, Model.name == DEMO))
        if model is None:
            model = registry.create_model(s, tenant_id=tenant_id, body=ModelCreate(
                name=DEMO, dataset=DEMO, architecture=Architecture(kind="mlp", hidden=[128, 64]),
                recipe=Recipe(optimizer="adam", lr=1e-3, epochs=30, batch_size=64, seed=0)))
            echo(f"created model '{DEMO}' (mlp 64-128-64-10)")
        model_id = model.id
        train_job = None
        if model.current_version is None:
            active = s.scalar(select(Job).where(Job.model_id == model.id, Job.kind == "train",
                                                Job.status.in_(("queued", "running"))))
            train_job = (active or registry.start_training(s, model=model, promote=True)).id
    if train_job:
        echo("training digits@1 …")
        status = runner.run_inline(train_job)
        if status not in ("completed", "skipped"):
            raise RuntimeError(f"demo training job {train_job} ended {status}")
    with session_scope() as s:
        model = s.get(Model, model_id)
        version = registry.current_version(s, model=model)
        if version is None:
            raise RuntimeError("demo model has no version (is another process training it?)")
        run = runs.influence_run(s, version=version, method="gradnorm")
        score_job = run.job_id if run and run.status in ("queued", "running") else None
        ref = registry.ref(model, version.number)
    if score_job:
        echo(f"scoring {ref} (gradnorm self-influence) …")
        runner.run_inline(score_job)
    with session_scope() as s:
        pool = s.scalar(select(ReferencePool).where(ReferencePool.model_id == model_id,
                                                    ReferencePool.status.in_(("queued", "running"))).limit(1))
        pool_job, k = (pool.job_id, pool.k) if pool else (None, 0)
        if pool is None and evidence.latest(s, model_id=model_id) is None:  # a data dir from before pools
            model = s.get(Model, model_id)
            job = evidence.start_pool(s, model=model, version=registry.current_version(s, model=model), reason="demo")
            pool_job, k = (job.id, evidence.pool_k(model)) if job else (None, 0)
    if pool_job:
        echo(f"measuring {ref}: reference pool of {k} shadow models (the evidence behind 'free' and audits) …")
        runner.run_inline(pool_job)
    with session_scope() as s:
        state = evidence.pool_read(s, model=s.get(Model, model_id)) or {}
        if state.get("status") == "completed":
            echo(f"reference pool: {state['n_certified']} of {state['n_points']} points certified free "
                 f"(group LiRA 95% bounds within the limits)")
    echo(f"demo ready: {ref}")
    return {"key": key, "ref": ref}


def data_dir() -> Path:
    return get_settings().resolved_data_dir
