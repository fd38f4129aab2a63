"""The validation job of a Parquet dataset: decode every row into its feature cache; then the dataset is `ready`,
or `failed` naming the rows that did not decode (and the job fails with the same message)."""

from __future__ import annotations

from dataclasses import dataclass

from app import artifacts
from app.datasets import service as datasets
from app.datasets.enums import DatasetStatus
from app.datasets.tables import Dataset
from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.tables import Job
from workers.engine import parquet
from workers.jobs.context import JobContext, claimed, complete


@dataclass(frozen=True)
class ValidateJob:
    job_id: str
    dataset_id: str
    uri: str
    features: str
    shape: list[int]
    n_train: int
    n_test: int
    validating: bool

    @classmethod
    def of(cls, job: Job, ds: Dataset) -> ValidateJob:
        return cls(job_id=job.id, dataset_id=ds.id, uri=ds.uri, features=ds.features, shape=list(ds.input_shape),
                   n_train=ds.n_points, n_test=ds.n_test, validating=ds.status == DatasetStatus.VALIDATING)


def run(ctx: JobContext) -> str:
    """Decode every row of the dataset (once: a ready dataset whose cache exists is left as it is)."""
    with session_scope(readonly=True) as s:
        job = s.get(Job, ctx.job_id)
        p = ValidateJob.of(job, s.get(Dataset, job.dataset_id))
    path = artifacts.path_of(p.uri)
    if p.validating or not parquet.cache_of(path).exists():
        try:
            with ctx.phase("decoding", 0.0, 0.95) as progress:
                report = parquet.build_cache(path, features=p.features, shape=p.shape, n_train=p.n_train,
                                             n_test=p.n_test, progress=progress)
        except Exception as exc:  # noqa: BLE001 - the dataset says why it is unusable; the job fails as well
            with session_scope() as s:
                datasets.invalid(s, dataset_id=p.dataset_id, error=artifacts.redact(f"{type(exc).__name__}: {exc}"))
            raise
        if report.n_bad:
            with session_scope() as s:
                datasets.invalid(s, dataset_id=p.dataset_id, error=report.message())
                jobs.fail(s, job=s.get(Job, p.job_id), error=report.message(), attempt=claimed(p.job_id),
                          result={"dataset_id": p.dataset_id, "n_bad": report.n_bad, "bad": report.bad})
            return "failed"
    with session_scope() as s:
        ds = datasets.validated(s, dataset_id=p.dataset_id)
        complete(s, s.get(Job, p.job_id), {"dataset_id": ds.id, "status": ds.status, "n_train": p.n_train,
                                           "n_test": p.n_test})
    return "completed"
