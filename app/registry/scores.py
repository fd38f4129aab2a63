"""Influence runs: a version's self-influence scores per method (stored by workers.engine.cache, read back with
it), the thresholds and budget they set, and a calibration's outcome."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import artifacts
from app.datasets.tables import Dataset, Point
from app.db import utcnow
from app.errors import NotFound
from app.ledger import service as ledger
from app.registry.enums import RunStatus
from app.registry.service import ref
from app.registry.tables import InfluenceRun, Model, Version
from app.settings import get_settings
from workers.engine import cache


def influence_run(session: Session, *, version: Version, method: str) -> InfluenceRun | None:
    return session.scalar(select(InfluenceRun).where(InfluenceRun.version_id == version.id,
                                                     InfluenceRun.method == method))


def load_scores(run: InfluenceRun) -> np.ndarray | None:
    """The run's scores (one per dataset row, memory-mapped), or None if absent."""
    if run.status != RunStatus.COMPLETED or not run.uri:
        return None
    path = artifacts.path_of(run.uri)  # <version scores>/<method>, as workers.engine.cache wrote it
    return cache.load_scores(path.parent, path.name)


def finish_scoring(session: Session, *, model: Model, version: Version, method: str, uri: str, sha256: str,
                   scores: np.ndarray, live_rows: list[int], seconds: float,
                   info: dict[str, Any] | None = None) -> InfluenceRun:
    """Record completed scores and set the version's (pre-calibration) free threshold and budget."""
    settings = get_settings()
    run = influence_run(session, version=version, method=method)
    if run is not None and run.status == RunStatus.COMPLETED and run.sha256 == sha256:
        return run  # the same scores again (a concurrent or re-run computation): recorded once
    if run is None:
        run = InfluenceRun(version_id=version.id, method=method, summary={})
        session.add(run)
    live = np.asarray(scores)[live_rows] if live_rows else np.asarray(scores)
    threshold = float(np.quantile(live, settings.free_quantile)) if len(live) else None
    ds = session.get(Dataset, model.dataset_id)
    run.status, run.uri, run.sha256 = RunStatus.COMPLETED, uri, sha256
    run.n, run.threshold = int(len(scores)), threshold
    run.summary = {"min": float(live.min()), "median": float(np.median(live)), "max": float(live.max()),
                   "seconds": round(seconds, 4), "quantile": settings.free_quantile} if len(live) else {}
    run.summary["computed_by"] = info or {}  # which approximation, factors reused or fitted, checkpoints or not
    run.completed_at = utcnow()
    if method == model.settings.scorer and "calibration" not in (version.metrics or {}):
        version.threshold = threshold
        version.budget = int(math.floor(settings.free_budget * ds.n_points))
    ledger.append(session, tenant_id=model.tenant_id, event="scores.computed", subject_type="version",
                  subject_id=version.id, data={"ref": ref(model, version.number), "method": method,
                                               "sha256": sha256, "threshold": threshold, "budget": version.budget,
                                               "n": int(len(scores)), "computed_by": info or {}})
    session.flush()
    return run


def scoring_running(session: Session, *, version: Version, method: str) -> bool:
    """Mark the version's run of `method` running; True, changing nothing, when its scores are already stored
    (an earlier attempt whose worker died before completing its job, or another job, computed them)."""
    run = influence_run(session, version=version, method=method)
    if run is not None and run.status == RunStatus.COMPLETED and load_scores(run) is not None:
        return True
    if run is not None:
        run.status = RunStatus.RUNNING
    return False


def scoring_failed(session: Session, *, version: Version, method: str) -> None:
    """The job computing the version's run of `method` failed."""
    run = influence_run(session, version=version, method=method)
    if run is not None:
        run.status = RunStatus.FAILED


def scoring_cancelled(session: Session, *, version: Version, method: str) -> None:
    """The job computing the version's run of `method` was cancelled (the version was revoked)."""
    run = influence_run(session, version=version, method=method)
    if run is not None and run.status != RunStatus.COMPLETED:
        run.status = RunStatus.CANCELLED


def record_calibration(session: Session, *, model: Model, version: Version, summary: dict[str, Any]) -> None:
    """A calibration's outcome: the free threshold and budget (when it calibrated the policy's scorer), the
    prune threshold and the curves on the version, with its ledger entry."""
    if summary["method"] == model.settings.scorer:
        version.threshold, version.budget = summary["threshold"], summary["n_free"]
    version.metrics = {**(version.metrics or {}), "prune_threshold": summary["prune_threshold"],
                       "calibration": summary}
    ledger.append(session, tenant_id=model.tenant_id, event="calibration.completed", subject_type="version",
                  subject_id=version.id, data={k: v for k, v in summary.items() if k != "curves"})


def influence_items(session: Session, *, model: Model, run: InfluenceRun, offset: int,
                    limit: int) -> tuple[list[tuple[str, float]], int]:
    """Scores of live points, lowest first (the free candidates), ties by point id."""
    scores = load_scores(run)
    if scores is None:
        return [], 0
    rows = session.execute(select(Point.row, Point.point_id).where(
        Point.dataset_id == model.dataset_id, Point.tombstoned_at.is_(None))).all()
    keyed = sorted(((float(scores[r]), pid) for r, pid in rows), key=lambda t: (t[0], t[1]))
    return [(pid, s) for s, pid in keyed[offset:offset + limit]], len(keyed)


def calibration_of(version: Version) -> dict[str, Any]:
    """The version's calibration summary and curves; 404 before a calibration job completed."""
    cal = (version.metrics or {}).get("calibration")
    if not cal:
        raise NotFound(f"version {version.number} has not been calibrated (POST .../calibrate)")
    return cal
