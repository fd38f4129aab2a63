"""A calibrate job: removal curves (retrain without the n lowest-scored points, per scorer and at random) that
choose a version's free threshold, budget and prune threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app import artifacts
from app.datasets import service as datasets
from app.db import session_scope
from app.jobs.enums import JobStatus
from app.jobs.params import CalibrateParams
from app.jobs.tables import Job
from app.registry import scores as runs
from app.registry import service as registry
from app.registry.schemas import SCORERS
from app.registry.tables import Model, Version
from workers.jobs import revocation, scoring
from workers.jobs.context import JobContext, ModelInputs, complete, engine, job_rows


@dataclass(frozen=True)
class CalibrateJob(ModelInputs):
    number: int
    version_id: str
    uri: str
    ref: str
    method: str
    methods: list[str]  # the method first, then the others compared with it
    missing: list[str]  # methods without stored scores yet
    live: np.ndarray
    grid: list[int]
    epsilon: float
    prune_epsilon: float
    auc_max: float

    @classmethod
    def read(cls, job_id: str) -> CalibrateJob:
        with session_scope() as s:
            job, model, ds = job_rows(s, job_id)
            version = registry.get_version(s, model=model, number=job.version)
            p = CalibrateParams.model_validate(job.params)
            method = p.method or model.settings.scorer
            live = np.array(datasets.live_rows(s, dataset_id=ds.id))
            compare = list(SCORERS) if p.compare is None else p.compare
            methods = [method] + [m for m in compare if m != method]
            missing = [m for m in methods if (run := runs.influence_run(s, version=version, method=m)) is None
                       or runs.load_scores(run) is None]
            grid = sorted({int(n) for n in (p.grid or []) if 0 < int(n) < len(live)})
            return cls(**ModelInputs.of(model, ds), number=version.number, version_id=version.id, uri=version.uri,
                       ref=registry.ref(model, version.number), method=method,
                       methods=methods, missing=missing, live=live, grid=grid,
                       epsilon=p.epsilon, prune_epsilon=p.prune_epsilon, auc_max=p.auc_max)


def threshold_for(sorted_scores: np.ndarray, n: int) -> float:
    """The strict threshold under which exactly the n lowest scores fall."""
    if n >= len(sorted_scores):
        return float(np.nextafter(sorted_scores[-1], np.inf))
    return float(sorted_scores[n])


def _scores(ctx: JobContext, c: CalibrateJob) -> dict[str, np.ndarray]:
    """Every compared method's scores of the version, computing those not stored yet."""
    with ctx.phase("scoring", 0.0, 0.1) as progress:
        for m in c.missing:
            scoring.score_version(model_id=c.model_id, number=c.number, method=m, progress=progress)
        with session_scope() as s:
            version = s.get(Version, c.version_id)
            return {m: np.asarray(runs.load_scores(runs.influence_run(s, version=version, method=m)))
                    for m in c.methods}


def _summary(c: CalibrateJob, curves: dict, grid: list[int], live_scores: np.ndarray) -> dict:
    """The chosen sizes and thresholds (and every method's, for comparison), with the plot of the curves."""
    from workers.engine.calibration import choose, plot

    eps, prune_eps, auc_max = c.epsilon, c.prune_epsilon, c.auc_max
    n_free = choose(curves[c.method], epsilon=eps, auc_max=auc_max)
    n_prune = max(n_free, choose(curves[c.method], epsilon=prune_eps, auc_max=None))
    by_method = {m: {"n_free": choose(curves[m], epsilon=eps, auc_max=auc_max),
                     "n_prune": choose(curves[m], epsilon=prune_eps, auc_max=None)} for m in curves}
    ranked = np.sort(live_scores)
    png_uri = artifacts.calibration_png_uri(c.version_id, c.method)
    artifacts.path_of(png_uri).parent.mkdir(parents=True, exist_ok=True)
    plot(curves, str(artifacts.path_of(png_uri)), title=f"{c.ref}: removing low-influence points", chosen=n_free)
    return {"method": c.method, "epsilon": eps, "prune_epsilon": prune_eps, "auc_max": auc_max, "grid": grid,
            "n_free": n_free, "n_prune": n_prune, "threshold": threshold_for(ranked, n_free),
            "prune_threshold": threshold_for(ranked, n_prune), "curves": curves, "png": png_uri,
            "by_method": by_method, "n_train": int(len(c.live))}


def run(ctx: JobContext) -> str:
    from workers.engine.calibration import default_grid

    eng = engine()
    c = CalibrateJob.read(ctx.job_id)
    every = _scores(ctx, c)
    live = c.live
    grid = c.grid or default_grid(len(live))
    # positions within the live set, lowest first (ties by row); random removal is the baseline
    orders = {m: np.lexsort((live, every[m][live])) for m in c.methods}
    orders["random"] = np.random.default_rng(int(c.recipe.get("seed", 0))).permutation(len(live))
    arrays = eng.load_arrays(artifacts.path_of(c.ds_uri))
    net = eng.load_network(c.arch, c.shape, c.n_classes, artifacts.path_of(c.uri))
    with ctx.phase("retraining", 0.1, 0.95) as progress:
        curves = eng.calibrate(net, c.arch, c.shape, c.n_classes, eng.rows(arrays, live), orders=orders, grid=grid,
                               recipe=c.recipe, progress=progress)
    with ctx.phase("registering", 0.95, 1.0):
        summary = _summary(c, curves, grid, every[c.method][live])
        with session_scope() as s:
            why = revocation.reason(s, model_id=c.model_id, number=c.number)
            if why is not None:  # revoked while the curves were computed: nothing is recorded on it
                artifacts.delete(summary["png"])
                raise revocation.VersionRevoked(why)
            job = s.get(Job, ctx.job_id)
            runs.record_calibration(s, model=s.get(Model, c.model_id), version=s.get(Version, c.version_id),
                                        summary=summary)
            complete(s, job, {"version": c.number, "ref": c.ref, "method": c.method,
                              **{k: summary[k] for k in ("n_free", "n_prune", "threshold", "prune_threshold")}})
    return JobStatus.COMPLETED
