"""Computing and storing a version's self-influence scores: shared by score, calibrate, unlearn and the shards."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from app import artifacts
from app.datasets import service as datasets
from app.datasets.tables import Dataset
from app.db import session_scope
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.tables import Model
from workers.jobs import revocation
from workers.jobs.context import ModelInputs, Progress, engine


@dataclass(frozen=True)
class ScoringInputs(ModelInputs):
    """What computing a version's scores needs, read in one short transaction."""

    number: int
    version_id: str
    w_uri: str
    n_rows: int
    live: list[int]

    @classmethod
    def read(cls, model_id: str, number: int) -> ScoringInputs:
        with session_scope() as s:
            model = s.get(Model, model_id)
            version = registry.get_version(s, model=model, number=number)
            ds = s.get(Dataset, model.dataset_id)
            return cls(**ModelInputs.of(model, ds), number=number, version_id=version.id, w_uri=version.uri,
                       n_rows=ds.n_points, live=datasets.live_rows(s, dataset_id=ds.id))


def compute(c: ScoringInputs, method: str, *, progress: Progress, rows: slice | None = None,
            prepare_only: bool = False) -> tuple[np.ndarray, dict]:
    """Scores of every dataset row (or of `rows`); prepare_only fits what shards share and scores nothing."""
    eng = engine()
    arrays = eng.load_arrays(artifacts.path_of(c.ds_uri))
    net = eng.load_network(c.arch, c.shape, c.n_classes, artifacts.path_of(c.w_uri))
    work_dir = artifacts.path_of(artifacts.scores_dir(c.version_id))
    if prepare_only:
        eng.prepare_scoring(method, net, eng.rows(arrays), work_dir=work_dir)
        return np.empty(0), {}
    return eng.self_influence(method, net, eng.rows(arrays), progress=progress, work_dir=work_dir,
                              checkpoints_dir=artifacts.path_of(artifacts.checkpoints_uri(c.w_uri)), rows=rows)


def store(c: ScoringInputs, *, method: str, scores: np.ndarray, seconds: float, info: dict) -> None:
    """Save the score array (the cache) and record the run, its threshold and the ledger entry; VersionRevoked
    (nothing kept) when the version was revoked meanwhile."""
    revocation.check(c.model_id, c.number)
    meta = engine().save_scores(artifacts.path_of(artifacts.scores_dir(c.version_id)), method, scores,
                                meta={"method": method, "version_id": c.version_id, "seconds": seconds,
                                      "info": info})
    with session_scope() as s:
        model = s.get(Model, c.model_id)
        version = registry.get_version(s, model=model, number=c.number)
        why = revocation.reason(s, model_id=c.model_id, number=c.number)
        if why is not None:  # revoked between the check and now: its purge must not be undone by these scores
            artifacts.delete(artifacts.scores_dir(c.version_id))
            raise revocation.VersionRevoked(why)
        runs.finish_scoring(s, model=model, version=version, method=method,
                                uri=artifacts.scores_uri(c.version_id, method), sha256=meta["sha256"],
                                scores=scores, live_rows=c.live, seconds=seconds, info=info)


def score_version(*, model_id: str, number: int, method: str, progress: Progress) -> float:
    """Compute and store a version's self-influence scores (all dataset rows); returns seconds."""
    c = ScoringInputs.read(model_id, number)
    began = time.perf_counter()
    scores, info = compute(c, method, progress=progress)
    seconds = time.perf_counter() - began
    store(c, method=method, scores=scores, seconds=seconds, info=info)
    return seconds
