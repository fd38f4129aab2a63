"""`lethe demo`: a dataset and its model, trained and scored through real jobs (idempotent).

`digits` (scikit-learn's bundled 8×8 digits as an .npz, an mlp) or `fashion-mnist` (Debian's dataset-fashion-mnist,
a stratified subset registered as Parquet with PNG image bytes, validated by its job, a small cnn)."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from app import artifacts, embedded
from app.datasets import service as datasets
from app.datasets.enums import DatasetStatus
from app.datasets.tables import Dataset
from app.db import session_scope
from app.evidence import service as evidence
from app.evidence.enums import ACTIVE as POOL_ACTIVE
from app.evidence.enums import PoolStatus
from app.evidence.tables import ReferencePool
from app.jobs.enums import ACTIVE as JOB_ACTIVE
from app.jobs.enums import FINAL as JOB_FINAL
from app.jobs.enums import JobKind, JobStatus
from app.jobs.tables import Job
from app.private_files import private_file
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.enums import RunStatus
from app.registry.schemas import Architecture, ModelCreate, Policy, Recipe
from app.registry.tables import Model
from app.settings import get_settings
from app.tenants import service as tenants

DEMO = "digits"
FASHION = "fashion-mnist"
FASHION_SIZE = 1000  # train images by default: with a pool of 8 + 2 models, about two minutes on 2 CPU cores
RUN_ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


@dataclass(frozen=True)
class Demo:
    name: str
    suffix: str
    architecture: dict[str, Any]
    recipe: dict[str, Any]
    described: str
    policy: dict[str, Any] | None = None


DEMOS = {
    DEMO: Demo(DEMO, "npz", {"kind": "mlp", "hidden": [128, 64]},
               {"optimizer": "adam", "lr": 1e-3, "epochs": 30, "batch_size": 64, "seed": 0}, "mlp 64-128-64-10"),
    FASHION: Demo(FASHION, "parquet", {"kind": "cnn", "channels": [8, 16], "hidden": 64},
                  {"optimizer": "adam", "lr": 2e-3, "epochs": 4, "batch_size": 64, "seed": 0},
                  "cnn 1×28×28 → conv 8 → conv 16 → 64 → 10", {"reference": {"k": 8, "shift_models": 2}}),
}


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


def fashion_parquet(n_train: int = FASHION_SIZE, *, seed: int = 0, root: Path | None = None) -> bytes:
    """A class-stratified subset of Fashion-MNIST as a Lethe Parquet dataset: PNG bytes, ids f00000… (train) and
    ft0000… (test, a quarter of n_train), 5 images per subject. FashionMNISTMissing says how to install it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from workers.engine import fashion_mnist

    parts = {split: fashion_mnist.subset(n, split=split, seed=seed, root=root or fashion_mnist.ROOT)
             for split, n in (("train", n_train), ("test", max(10, n_train // 4)))}

    def png(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.rint(pixels[0] * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
        return buf.getvalue()

    (x, y), (xt, yt) = parts["train"], parts["test"]
    table = pa.table({
        "point_id": [f"f{k:05d}" for k in range(len(x))] + [f"ft{k:04d}" for k in range(len(xt))],
        "label": pa.array(np.concatenate([y, yt]), pa.int64()),
        "subject_id": [f"subject-{k // 5:04d}" for k in range(len(x))] + [None] * len(xt),
        "split": ["train"] * len(x) + ["test"] * len(xt),
        "image": pa.array([png(p) for p in x] + [png(p) for p in xt], pa.binary()),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def run_demo(*, dataset: str = DEMO, size: int | None = None, echo=print) -> dict[str, str]:  # noqa: ANN001
    """Register the demo's dataset and model (`digits` or `fashion-mnist`, of `size` train points), train and score
    version 1 and measure its reference pool, unless already there.

    Every job goes the way a served request's does, through the outbox and the broker to a worker: the demo runs
    one beside itself while it waits (as `lethe serve` does), so it needs no separately started worker."""
    from app import migrate

    demo = DEMOS[dataset]
    if dataset == FASHION:  # before anything is recorded: the package may be missing (the error says how)
        from workers.engine import fashion_mnist

        if not fashion_mnist.available(fashion_mnist.ROOT):
            raise fashion_mnist.FashionMNISTMissing(
                f"Fashion-MNIST is not under {fashion_mnist.ROOT}: {fashion_mnist.INSTALL_HINT}")
    migrate.upgrade()
    key = admin_key()
    # the worker's own output stays off stdout, which `lethe demo --json` keeps for its document
    with embedded.running(worker_stdout=subprocess.DEVNULL) as worker:
        def wait(job_id: str) -> str:
            return wait_for_job(job_id, worker=worker)

        tenant_id = _dataset(demo, size=size, echo=echo, wait=wait)
        model_id = _trained_model(demo, tenant_id=tenant_id, echo=echo, wait=wait)
        ref = _scored(model_id, echo=echo, wait=wait)
        _measured(model_id, ref=ref, echo=echo, wait=wait)
    echo(f"demo ready: {ref}")
    return {"key": key, "ref": ref}


QUEUED_LIMIT = 120.0  # seconds a demo job may wait unclaimed beside an idle worker before the demo gives up


def wait_for_job(job_id: str, *, worker: subprocess.Popen | None = None, poll: float = 0.5,
                 queued_limit: float = QUEUED_LIMIT) -> str:
    """The job's final status once a worker has run it; RuntimeError if `worker` exits first, or if the job is
    still unclaimed after `queued_limit` seconds (the worker never received it: another broker, say). A claimed
    job may run as long as it needs."""
    began = time.monotonic()
    while True:
        with session_scope(readonly=True) as s:
            status = s.scalar(select(Job.status).where(Job.id == job_id))
        if status in JOB_FINAL:
            return status
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the demo's worker exited (code {worker.returncode}) before job {job_id} ended")
        if status == JobStatus.QUEUED and time.monotonic() - began > queued_limit:
            raise RuntimeError(f"job {job_id} is still queued after {queued_limit:.0f} s: the demo's worker does not "
                               "receive from the broker it was published to (check LETHE_BROKER_URL)")
        time.sleep(poll)


Wait = Callable[[str], str]


def _dataset(demo: Demo, *, size: int | None, echo: Callable[[str], Any], wait: Wait) -> str:
    """The demo's dataset, registered (and validated, for Parquet) if missing; the default tenant's id."""
    validate_job = None
    with session_scope() as s:
        tenant_id = tenants.get_or_create_tenant(s, name=tenants.DEFAULT_TENANT).id
        ds = s.scalar(select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == demo.name))
        if ds is None:
            uri = artifacts.demo_dataset_uri(demo.name, demo.suffix)
            data = fashion_parquet(size or FASHION_SIZE) if demo.name == FASHION else digits_npz()
            _, sha, _ = artifacts.write_chunks(uri, [data])
            ds = datasets.register(s, tenant_id=tenant_id, name=demo.name, uri=uri, sha256=sha)
            echo(f"registered dataset '{demo.name}' ({ds.n_points} points, {ds.n_test} test, {demo.suffix})")
        if ds.status == DatasetStatus.VALIDATING:
            validate_job = datasets.validation_job(s, dataset_id=ds.id)
    if validate_job:
        echo(f"validating '{demo.name}' (decoding every image) …")
        wait(validate_job)
    return tenant_id


def _trained_model(demo: Demo, *, tenant_id: str, echo: Callable[[str], Any], wait: Wait) -> str:
    """The demo's model, created if missing, with a trained version 1; its id."""
    train_job = None
    with session_scope() as s:
        model = s.scalar(select(Model).where(Model.tenant_id == tenant_id, Model.name == demo.name))
        if model is None:
            model = registry.create_model(s, tenant_id=tenant_id, body=ModelCreate(
                name=demo.name, dataset=demo.name, architecture=Architecture(**demo.architecture),
                recipe=Recipe(**demo.recipe), **({"policy": Policy(**demo.policy)} if demo.policy else {})))
            echo(f"created model '{demo.name}' ({demo.described})")
        model_id = model.id
        if model.current_version is None:
            active = s.scalar(select(Job).where(Job.model_id == model.id, Job.kind == JobKind.TRAIN,
                                                Job.status.in_(JOB_ACTIVE)))
            train_job = (active or registry.start_training(s, model=model, promote=True)).id
    if train_job:
        echo(f"training {demo.name}@1 …")
        status = wait(train_job)
        if status != JobStatus.COMPLETED:
            raise RuntimeError(f"demo training job {train_job} ended {status}")
    return model_id


def _scored(model_id: str, *, echo: Callable[[str], Any], wait: Wait) -> str:
    """The current version's gradnorm scores, waited for if its scoring job is still to run; the version's ref."""
    with session_scope() as s:
        model = s.get(Model, model_id)
        version = registry.current_version(s, model=model)
        if version is None:
            raise RuntimeError("demo model has no version (is another process training it?)")
        run = runs.influence_run(s, version=version, method="gradnorm")
        score_job = run.job_id if run and run.status in RUN_ACTIVE else None
        ref = registry.ref(model, version.number)
    if score_job:
        echo(f"scoring {ref} (gradnorm self-influence) …")
        wait(score_job)
    return ref


def _measured(model_id: str, *, ref: str, echo: Callable[[str], Any], wait: Wait) -> None:
    """The lineage's reference pool, started if the data dir has none (one from before pools) and waited for."""
    with session_scope() as s:
        pool = s.scalar(select(ReferencePool).where(ReferencePool.model_id == model_id,
                                                    ReferencePool.status.in_(POOL_ACTIVE)).limit(1))
        pool_job, k = (pool.job_id, pool.k) if pool else (None, 0)
        if pool is None and evidence.latest(s, model_id=model_id) is None:
            model = s.get(Model, model_id)
            job = evidence.start_pool(s, model=model, version=registry.current_version(s, model=model), reason="demo")
            pool_job, k = (job.id, evidence.pool_k(model)) if job else (None, 0)
    if pool_job:
        echo(f"measuring {ref}: reference pool of {k} shadow models (the evidence behind 'free' and audits) …")
        wait(pool_job)
    with session_scope() as s:
        state = evidence.pool_read(s, model=s.get(Model, model_id)) or {}
        if state.get("status") == PoolStatus.COMPLETED:
            echo(f"reference pool: {state['n_certified']} of {state['n_points']} points certified free "
                 f"(group LiRA 95% bounds within the limits)")


def data_dir() -> Path:
    return get_settings().resolved_data_dir
