"""Models, versions, promotion and revocation, influence runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import artifacts
from app.datasets import service as datasets
from app.datasets.tables import Dataset
from app.db import page, utcnow
from app.errors import Conflict, Gone, NotFound, Unprocessable, closest, did_you_mean
from app.evidence import service as evidence
from app.jobs import service as jobs
from app.jobs.enums import ACTIVE, JobKind, JobStatus
from app.jobs.params import ScoreParams, TrainParams
from app.jobs.tables import Audit, Job
from app.ledger import service as ledger
from app.registry.enums import RunStatus, VersionSource, VersionStatus
from app.registry.schemas import InfluenceSummary, ModelCreate, ModelRead, VersionRead
from app.registry.tables import InfluenceRun, Model, Version
from app.settings import get_settings
from app.uploads import check_safetensors_header
from app.webhooks import service as webhooks
from workers.engine import catalog, plugins


def ref(model: Model, number: int) -> str:
    return f"{model.name}@{number}"


def check_limits(body: ModelCreate, *, input_shape: list[int], n_classes: int) -> None:
    """422 for an architecture or recipe past this deployment's limits (LETHE_MAX_*), measured by the kind's
    torch-free hooks (layer_widths, layer_count, parameter_count) where its plugin provides them."""
    settings = get_settings()
    arch = body.architecture.model_dump(exclude_none=True)
    kind = plugins.plugin(arch["kind"])
    config = {k: v for k, v in arch.items() if k != "kind"}
    widths = kind.layer_widths(config) if hasattr(kind, "layer_widths") else []
    if any(w < 1 for w in widths):
        raise Unprocessable("layer widths must be positive")
    if any(w > settings.max_layer_width for w in widths):
        raise Unprocessable(f"layer widths may be at most {settings.max_layer_width} (LETHE_MAX_LAYER_WIDTH)")
    if hasattr(kind, "layer_count") and kind.layer_count(config) > settings.max_layers:
        raise Unprocessable(f"at most {settings.max_layers} layers (LETHE_MAX_LAYERS)")
    if hasattr(kind, "parameter_count"):
        params = kind.parameter_count(config, input_shape=input_shape, n_classes=n_classes)
        if params > settings.max_model_params:
            raise Unprocessable(f"this architecture has {params:,} parameters on the dataset's inputs; at most "
                                f"{settings.max_model_params:,} (LETHE_MAX_MODEL_PARAMS)")
    if body.recipe.epochs > settings.max_epochs:
        raise Unprocessable(f"epochs may be at most {settings.max_epochs} (LETHE_MAX_EPOCHS)")


def check_applies(architecture: dict[str, Any], names: list[str]) -> None:
    """422 naming why, when a scorer or unlearning algorithm of `names` cannot apply to the architecture's kind."""
    try:
        plugins.check_applies(architecture["kind"], [n for n in names if n])
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


def create_model(session: Session, *, tenant_id: str, body: ModelCreate) -> Model:
    """Register a model lineage on one of the tenant's datasets."""
    if body.name == "kinds":
        raise Unprocessable("the model name 'kinds' is reserved: GET /models/kinds lists the installed model kinds")
    ds = datasets.get(session, tenant_id=tenant_id, name_or_id=body.dataset)
    datasets.require_ready(ds)
    try:  # a text dataset needs a kind whose encode tokenises; a text kind cannot read feature tensors
        plugins.check_reads(body.architecture.kind, ds.features or "x", ds.name)
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None
    check_limits(body, input_shape=list(ds.input_shape), n_classes=ds.n_classes)
    check_applies(body.architecture.model_dump(exclude_none=True), [body.policy.scorer, body.policy.algorithm])
    if session.scalar(select(Model.id).where(Model.tenant_id == tenant_id, Model.name == body.name)):
        raise Conflict(f"model '{body.name}' already exists")
    model = Model(tenant_id=tenant_id, name=body.name, dataset_id=ds.id,
                  architecture=body.architecture.model_dump(exclude_none=True),
                  recipe=body.recipe.model_dump(), policy=body.policy.model_dump(), free_spent=0)
    session.add(model)
    session.flush()
    ledger.append(session, tenant_id=tenant_id, event="model.registered", subject_type="model",
                  subject_id=model.id, data={"name": model.name, "dataset_id": ds.id,
                                             "architecture": model.architecture, "policy": model.policy})
    return model


def get_model(session: Session, *, tenant_id: str, name: str) -> Model:
    """The tenant's model by name; 404 otherwise."""
    model = session.scalar(select(Model).where(Model.tenant_id == tenant_id, Model.name == name))
    if model is None:
        names = session.scalars(select(Model.name).where(Model.tenant_id == tenant_id))
        suggestions = closest(name, names)
        raise NotFound(f"no model '{name}'{did_you_mean(suggestions)}", suggestions=suggestions)
    return model


def resolve_ref(session: Session, *, tenant_id: str, target: str) -> tuple[Model, int | None]:
    """Parse 'name' or 'name@n' into the model and the named version number (None when absent)."""
    name, sep, number = target.partition("@")
    model = get_model(session, tenant_id=tenant_id, name=name)
    if not sep:
        return model, None
    if not number.isdigit():
        raise Unprocessable(f"'{target}' is not 'name' or 'name@<version>'")
    get_version(session, model=model, number=int(number))
    return model, int(number)


def get_version(session: Session, *, model: Model, number: int) -> Version:
    """Version n of the lineage; 404 otherwise."""
    version = session.scalar(select(Version).where(Version.model_id == model.id, Version.number == number))
    if version is None:
        current = f"; the current version is {ref(model, model.current_version)}" if model.current_version else ""
        raise NotFound(f"model '{model.name}' has no version {number}{current}", current=model.current_version)
    return version


def current_version(session: Session, *, model: Model) -> Version | None:
    return None if model.current_version is None else get_version(session, model=model, number=model.current_version)


def list_models(session: Session, *, tenant_id: str, offset: int, limit: int) -> tuple[list[Model], int]:
    """The tenant's models by name."""
    q = select(Model).where(Model.tenant_id == tenant_id)
    return page(session, q, Model.name, offset=offset, limit=limit)


def list_versions(session: Session, *, model: Model, offset: int, limit: int) -> tuple[list[Version], int]:
    """The model's versions, newest first."""
    q = select(Version).where(Version.model_id == model.id)
    return page(session, q, Version.number.desc(), offset=offset, limit=limit)


def models_on_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> list[Model]:
    return list(session.scalars(select(Model).where(Model.tenant_id == tenant_id, Model.dataset_id == dataset_id)
                                .order_by(Model.name)))


# Formats refused by their leading bytes, with why: each can run code when loaded, and none loads strictly
# into the registered architecture's modules.
REFUSED_FORMATS = (
    (b"PK\x03\x04", "a zip archive (torch.save .pt/.bin, TorchScript or torch.export .pt2): these hold pickles, "
                     "which execute code when loaded (torch.export.load included), and .pt2/TorchScript lose the "
                     "module types the scorers need"),
    (b"\x80", "a pickle (a legacy .pt/.bin/.pkl): unpickling executes code"),
)


def check_safetensors(path: Path) -> list[str]:
    """The tensor names of a safetensors file; 422 for anything else (pickles, zip archives), saying why."""
    from safetensors import safe_open

    with open(path, "rb") as fh:
        head = fh.read(4)
    for magic, what in REFUSED_FORMATS:
        if head.startswith(magic):
            raise Unprocessable(f"weights must be a safetensors file; this is {what}. Export the state dict with "
                                "safetensors.torch.save_file(model.state_dict(), ...)")
    check_safetensors_header(path)  # declared header and tensor sizes against the file, before the library reads
    try:
        with safe_open(str(path), framework="numpy") as fh:
            names = list(fh.keys())
    except Exception as exc:  # noqa: BLE001 - the library raises several types for bad files
        raise Unprocessable(f"weights must be a safetensors file: {exc}") from exc
    if not names:
        raise Unprocessable("the safetensors file holds no tensors")
    return names


def expected_state(session: Session, *, model: Model) -> tuple[dict[str, list[int]], str] | None:
    """The state dict (name → shape) weights for this model must have, and where that comes from: the kind's
    torch-free state_shapes, else the lineage's newest version's file; None when neither is known (the
    worker's strict load is then the judge)."""
    kind = plugins.plugin(model.architecture["kind"])
    if hasattr(kind, "state_shapes"):
        ds = session.get(Dataset, model.dataset_id)
        config = {k: v for k, v in model.architecture.items() if k != "kind"}
        return kind.state_shapes(config, input_shape=list(ds.input_shape), n_classes=ds.n_classes), "architecture"
    newest = session.scalar(select(Version).where(Version.model_id == model.id, Version.uri.is_not(None))
                            .order_by(Version.number.desc()).limit(1))
    if newest is None or not artifacts.path_of(newest.uri).exists():
        return None
    header = check_safetensors_header(artifacts.path_of(newest.uri))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}, f"version {newest.number}"


def _names(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > limit else "")


def check_weights(session: Session, *, model: Model, path: Path) -> None:
    """422 unless `path` is a safetensors file whose tensors are exactly the model's state dict: missing and
    unexpected keys and shape mismatches are named (a strict load, decided before anything is recorded)."""
    check_safetensors(path)
    expected = expected_state(session, model=model)
    if expected is None:
        return
    want, source = expected
    got = {k: v["shape"] for k, v in check_safetensors_header(path).items() if k != "__metadata__"}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    shapes = [f"{k} {got[k]} (expected {want[k]})" for k in sorted(set(want) & set(got)) if got[k] != want[k]]
    if shapes:
        problems.append(f"wrong shapes: {_names(shapes)}")
    if problems:
        raise Unprocessable(f"weights do not match the model's {model.architecture['kind']} state dict (from its "
                            f"{source}): " + "; ".join(problems))


def next_number(session: Session, *, model: Model) -> int:
    return (session.scalar(select(func.max(Version.number)).where(Version.model_id == model.id)) or 0) + 1


def register_version(session: Session, *, model: Model, source: VersionSource, sha256: str, uri: str,
                     parent: Version | None = None, request_id: str | None = None, job_id: str | None = None,
                     n_train: int | None = None, metrics: dict[str, Any] | None = None,
                     promote: bool = True) -> tuple[Version, Job]:
    """Record a new version (optionally current) and queue scoring with the policy's scorer."""
    ledger.lock_chain(session, tenant_id=model.tenant_id)  # one registration per tenant at a time: distinct numbers
    number = next_number(session, model=model)
    version = Version(model_id=model.id, number=number, parent_id=parent.id if parent else None,
                      request_id=request_id, job_id=job_id, source=source, sha256=sha256, uri=uri,
                      status=VersionStatus.ACTIVE, n_train=n_train, metrics=metrics or {})
    session.add(version)
    session.flush()
    ledger.append(session, tenant_id=model.tenant_id, event="version.registered", subject_type="version",
                  subject_id=version.id, data={"ref": ref(model, number), "source": source, "sha256": sha256,
                                               "parent": parent.number if parent else None,
                                               "request_id": request_id, "job_id": job_id})
    if promote:
        promote_version(session, model=model, version=version, revoke_older=source == VersionSource.UNLEARN)
    score_job = start_scoring(session, model=model, version=version, method=model.settings.scorer)
    return version, score_job


def promote_version(session: Session, *, model: Model, version: Version, revoke_older: bool) -> None:
    """Make `version` current; an unlearned version revokes every older one (they hold forgotten data)."""
    model.current_version = version.number
    ledger.append(session, tenant_id=model.tenant_id, event="version.promoted", subject_type="version",
                  subject_id=version.id, data={"ref": ref(model, version.number)})
    webhooks.emit(session, tenant_id=model.tenant_id, event_type="version.promoted",
                  data={"model": model.name, "version": version.number, "ref": ref(model, version.number),
                        "sha256": version.sha256, "source": version.source,
                        "weights": f"/models/{model.name}/versions/{version.number}/weights"})
    if revoke_older:
        for old in session.scalars(select(Version).where(Version.model_id == model.id,
                                                         Version.number < version.number,
                                                         Version.status == VersionStatus.ACTIVE)):
            revoke(session, model=model, version=old)


def revoke(session: Session, *, model: Model, version: Version) -> None:
    """Purge a superseded version's weights and cached scores; its weights answer 410 from now on."""
    purged = []
    if version.uri:
        purged += [uri for uri in (version.uri, artifacts.checkpoints_uri(version.uri)) if artifacts.delete(uri)]
    for run in session.scalars(select(InfluenceRun).where(InfluenceRun.version_id == version.id)):
        if run.uri and artifacts.delete(run.uri):
            purged.append(run.uri)
    if artifacts.delete(artifacts.scores_dir(version.id)):  # K-FAC factors and all else cached for the version
        purged.append(artifacts.scores_dir(version.id))
    version.status = VersionStatus.REVOKED
    version.revoked_at = utcnow()
    ledger.append(session, tenant_id=model.tenant_id, event="version.revoked", subject_type="version",
                  subject_id=version.id, data={"ref": ref(model, version.number), "purged": purged})
    # Work queued on it can no longer run (its weights are gone): cancelled now, with the reason. A job already
    # running finds the version revoked and ends cancelled the same way (workers/jobs/revocation.py).
    why = revoked_reason(model, version)
    for job in session.scalars(select(Job).where(Job.model_id == model.id, Job.version == version.number,
                                                 Job.kind.in_(VERSION_JOBS), Job.status == JobStatus.QUEUED)):
        jobs.cancel(session, job=job, reason=why)
    for run in session.scalars(select(InfluenceRun).where(InfluenceRun.version_id == version.id,
                                                          InfluenceRun.status.in_((RunStatus.QUEUED,
                                                                                   RunStatus.RUNNING)))):
        run.status = RunStatus.CANCELLED


# The job kinds that compute on one version's weights (a reference job's target version is optional to it).
VERSION_JOBS = (JobKind.SCORE, JobKind.CALIBRATE)


def revoked_reason(model: Model, version: Version) -> str:
    return (f"{ref(model, version.number)} was revoked (superseded by an unlearned version; its weights were purged) "
            "before this job could run")


def start_training(session: Session, *, model: Model, promote: bool) -> Job:
    """Queue a train job on the dataset's live (non-tombstoned) points."""
    if session.scalar(select(Job.id).where(Job.model_id == model.id, Job.kind == JobKind.TRAIN,
                                           Job.status.in_(ACTIVE))):
        raise Conflict(f"model '{model.name}' is already training")
    return jobs.create(session, tenant_id=model.tenant_id, kind=JobKind.TRAIN, model_id=model.id, version=None,
                       params=TrainParams(promote=promote).model_dump())


def start_scoring(session: Session, *, model: Model, version: Version, method: str) -> Job:
    """Queue (or return the queued) scoring job of `method` for a version; 422 when it cannot apply to the model,
    410 when the version was revoked."""
    check_applies(model.architecture, [method])
    if version.status == VersionStatus.REVOKED:
        raise Gone(f"{ref(model, version.number)} was revoked: its weights were purged")
    run = session.scalar(select(InfluenceRun).where(InfluenceRun.version_id == version.id,
                                                    InfluenceRun.method == method))
    if run is not None and run.status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED) and run.job_id:
        existing = session.get(Job, run.job_id)
        if existing is not None and (run.status == RunStatus.COMPLETED or existing.status in ACTIVE):
            return existing
    job = jobs.create(session, tenant_id=model.tenant_id, kind=JobKind.SCORE, model_id=model.id,
                      version=version.number, params=ScoreParams(method=method).model_dump())
    if run is None:
        run = InfluenceRun(version_id=version.id, method=method, status=RunStatus.QUEUED, summary={})
        session.add(run)
    run.status, run.job_id = RunStatus.QUEUED, job.id
    session.flush()
    return job


def settle_budget(session: Session, *, model: Model, version: Version, job_id: str, algorithm: str) -> dict[str, Any]:
    """A job's retain-only repair settled the lineage's spent free budget: record it and reset the budget."""
    settled = {"free_points": model.free_spent}
    ledger.append(session, tenant_id=model.tenant_id, event="budget.settled", subject_type="model",
                  subject_id=model.id, data={"free_points": model.free_spent, "job_id": job_id,
                                             "repair": f"retain-only ({algorithm})",
                                             "ref": ref(model, version.number)})
    model.free_spent = 0
    return settled


def weights_path(session: Session, *, model: Model, number: int) -> Path:
    """The file of a live version; 410 when the version was revoked and purged."""
    version = get_version(session, model=model, number=number)
    if version.status == VersionStatus.REVOKED or not version.uri:
        raise Gone(f"{ref(model, number)} was revoked: its weights were purged")
    path = artifacts.path_of(version.uri)
    if not path.exists():
        raise Gone(f"{ref(model, number)} has no weights on disk")
    return path


def version_read(session: Session, *, model: Model, version: Version, with_audit: bool = False) -> VersionRead:
    parent = session.get(Version, version.parent_id) if version.parent_id else None
    runs = session.scalars(select(InfluenceRun).where(InfluenceRun.version_id == version.id)
                           .order_by(InfluenceRun.method))
    audit = None
    if with_audit:
        row = session.scalar(select(Audit).where(Audit.model_id == model.id, Audit.version == version.number)
                             .order_by(Audit.created_at.desc()).limit(1))
        if row is not None:
            audit = {"passed": row.passed, "attempt": row.attempt, "algorithm": row.algorithm, **row.report}
    return VersionRead(
        version=version.number, ref=ref(model, version.number), sha256=version.sha256, source=version.source,
        status=version.status, parent=parent.number if parent else None, request_id=version.request_id,
        job_id=version.job_id, threshold=version.threshold, budget=version.budget, n_train=version.n_train,
        metrics=version.metrics or {}, created_at=version.created_at, revoked_at=version.revoked_at,
        influence=[InfluenceSummary(method=r.method, status=r.status, threshold=r.threshold, n=r.n, job_id=r.job_id,
                                   computed_by=(r.summary or {}).get("computed_by", {}))
                   for r in runs],
        audit=audit,
    )


def model_read(session: Session, *, model: Model) -> ModelRead:
    ds = session.get(Dataset, model.dataset_id)
    versions = session.scalars(select(Version).where(Version.model_id == model.id).order_by(Version.number))
    return ModelRead(
        id=model.id, name=model.name, dataset=ds.name, architecture=model.architecture, recipe=model.recipe,
        policy=model.policy, current=model.current_version,
        ref=ref(model, model.current_version) if model.current_version else None, free_spent=model.free_spent,
        reference=evidence.pool_read(session, model=model),
        versions=[version_read(session, model=model, version=v) for v in versions], created_at=model.created_at,
    )


def start_calibration(session: Session, *, model: Model, version: Version, params: dict[str, Any]) -> Job:
    """Queue the Figure 4.1 calibration of a version; 422 without a test split (the audit needs one too)."""
    ds = session.get(Dataset, model.dataset_id)
    if ds.n_test == 0:
        raise Unprocessable(f"dataset '{ds.name}' has no test split (x_test, y_test): calibration needs one")
    if version.status != VersionStatus.ACTIVE:
        raise Gone(f"{ref(model, version.number)} was revoked")
    check_applies(model.architecture, [params.get("method") or model.settings.scorer,
                                       *(params.get("compare") or [])])
    refused = plugins.cannot_apply(model.architecture["kind"])
    if params.get("compare") is None and refused:  # by default every scorer: those that apply to the model
        params = {**params, "compare": [m for m in catalog.SCORERS if m not in refused]}
    return jobs.create(session, tenant_id=model.tenant_id, kind=JobKind.CALIBRATE, model_id=model.id,
                       version=version.number, params=params)
