"""The validation job of a Parquet dataset: decode every row into its feature cache; then the dataset is `ready`,
or `failed` naming the rows that did not decode (and the job fails with the same message)."""

from __future__ import annotations

from typing import Any

from app import artifacts
from app.datasets.tables import Dataset
from app.db import session_scope, utcnow
from app.jobs.tables import Job
from app.ledger import service as ledger
from workers.engine import parquet


def _fail_dataset(dataset_id: str, error: str) -> None:
    with session_scope() as s:
        ds = s.get(Dataset, dataset_id)
        ledger.lock_chain(s, tenant_id=ds.tenant_id)
        if ds.status == "validating":
            ds.status, ds.error = "failed", error
            ledger.append(s, tenant_id=ds.tenant_id, event="dataset.failed", subject_type="dataset",
                          subject_id=ds.id, data={"error": error[:2000]})


def run(ctx: Any) -> str:
    """Run the validation job of `ctx` (a pipeline JobContext)."""
    from workers.pipeline import _complete, _fence  # lazy: the pipeline imports this module

    with session_scope(readonly=True) as s:
        job = s.get(Job, ctx.job_id)
        ds = s.get(Dataset, job.dataset_id)
        c = {"dataset_id": ds.id, "tenant_id": ds.tenant_id, "uri": ds.uri, "features": ds.features,
             "shape": list(ds.input_shape), "n_train": ds.n_points, "n_test": ds.n_test, "status": ds.status}
    path = artifacts.path_of(c["uri"])
    if c["status"] == "validating" or not parquet.cache_of(path).exists():
        try:
            with ctx.phase("decoding", 0.0, 0.95) as progress:
                report = parquet.build_cache(path, features=c["features"], shape=c["shape"], n_train=c["n_train"],
                                             n_test=c["n_test"], progress=progress)
        except Exception as exc:  # noqa: BLE001 - the dataset says why it is unusable; the job fails as well
            _fail_dataset(c["dataset_id"], artifacts.redact(f"{type(exc).__name__}: {exc}"))
            raise
        if report.n_bad:
            error = report.message()
            _fail_dataset(c["dataset_id"], error)
            with session_scope() as s:
                ledger.lock_chain(s, tenant_id=c["tenant_id"])
                _fence(s, ctx.job_id)
                job = s.get(Job, ctx.job_id)
                job.status, job.error, job.finished_at = "failed", error, utcnow()
                job.result = {"dataset_id": c["dataset_id"], "n_bad": report.n_bad, "bad": report.bad}
                ledger.append(s, tenant_id=c["tenant_id"], event="job.failed", subject_type="job",
                              subject_id=job.id, data={"error": error[:2000]})
            return "failed"
    with session_scope() as s:
        ledger.lock_chain(s, tenant_id=c["tenant_id"])
        ds = s.get(Dataset, c["dataset_id"])
        if ds.status == "validating":
            ds.status = "ready"
            ledger.append(s, tenant_id=ds.tenant_id, event="dataset.ready", subject_type="dataset",
                          subject_id=ds.id, data={"n_points": ds.n_points, "n_test": ds.n_test})
        _complete(s, s.get(Job, ctx.job_id), {"dataset_id": ds.id, "status": ds.status, "n_train": c["n_train"],
                                              "n_test": c["n_test"]})
    return "completed"
