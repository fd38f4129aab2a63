from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from app import artifacts
from app.auth import Modeller, Reader
from app.db import SessionDep, new_id
from app.errors import Unprocessable
from app.evidence import service as evidence
from app.openapi import problems
from app.paging import Page, PageParams, next_cursor, page_params
from app.registry import scores as runs
from app.registry import service
from app.registry.enums import VersionSource
from app.registry.schemas import (
    CalibrateCreate,
    InfluenceCreate,
    InfluenceItem,
    InfluencePage,
    JobAccepted,
    ModelCreate,
    ModelRead,
    Scorer,
    TrainCreate,
    VersionCreated,
    VersionRead,
)
from app.uploads import store_upload
from workers.engine import plugins
from workers.engine.catalog import DEFAULT_SCORER

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=201, response_model=ModelRead, responses=problems(404))
def create_model(body: ModelCreate, caller: Modeller, session: SessionDep) -> ModelRead:
    """Register a model on a dataset: architecture, training recipe and unlearning policy. It has no version until
    one is uploaded or trained."""
    model = service.create_model(session, tenant_id=caller.tenant_id, body=body)
    session.commit()
    return service.model_read(session, model=model)


@router.get("", response_model=Page[ModelRead])
def list_models(caller: Reader, session: SessionDep,
                page: Annotated[PageParams, Depends(page_params)]) -> Page[ModelRead]:
    """The tenant's models with their current version, a page at a time."""
    rows, total = service.list_models(session, tenant_id=caller.tenant_id, offset=page.offset, limit=page.limit)
    return Page(items=[service.model_read(session, model=m) for m in rows], total=total,
                next=next_cursor(page, total))


@router.get("/kinds")
def list_kinds(caller: Reader) -> dict[str, list[str]]:
    """The model kinds installed here (`lethe.models` entry points), from their metadata: nothing is imported."""
    return {"kinds": plugins.installed_kinds()}


@router.get("/{name}", response_model=ModelRead)
def get_model(name: str, caller: Reader, session: SessionDep) -> ModelRead:
    """One model: its dataset, architecture, policy, current version and the reference pool's certification curves."""
    return service.model_read(session, model=service.get_model(session, tenant_id=caller.tenant_id, name=name))


@router.post("/{name}/versions", status_code=201, response_model=VersionCreated,
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["weights"],
                 "properties": {"weights": {"type": "string", "format": "binary"}}}}}}})
async def upload_version(name: str, request: Request, caller: Modeller, session: SessionDep,
                         promote: bool = True) -> VersionCreated:
    """Upload safetensors weights as the next version; it becomes current unless promote=false."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    form = await request.form()
    upload = form.get("weights")
    if not isinstance(upload, UploadFile):
        raise Unprocessable("multipart form needs a 'weights' file (safetensors)")
    # A path no other upload can choose: a file named after its version number could be overwritten by a
    # concurrent upload (another API process) that picked the same number before either registered it.
    uri = artifacts.upload_uri(model.id, new_id())
    sha, _ = store_upload(upload, uri=uri)
    try:
        service.check_weights(session, model=model, path=artifacts.path_of(uri))
        version, job = service.register_version(session, model=model, source=VersionSource.UPLOAD, sha256=sha, uri=uri,
                                                promote=promote)
        session.commit()
    except BaseException:
        artifacts.delete(uri)
        raise
    return VersionCreated(version=version.number, ref=service.ref(model, version.number), sha256=sha,
                          current=model.current_version, score_job_id=job.id)


@router.post("/{name}/train", status_code=202, response_model=JobAccepted, responses=problems(409))
def train(name: str, caller: Modeller, session: SessionDep, body: TrainCreate | None = None) -> JobAccepted:
    """Train the next version from the recipe on the dataset's live points (a job)."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    job = service.start_training(session, model=model, promote=(body or TrainCreate()).promote)
    session.commit()
    return JobAccepted(job_id=job.id, status=job.status, kind=job.kind)


@router.get("/{name}/versions", response_model=Page[VersionRead])
def list_versions(name: str, caller: Reader, session: SessionDep,
                  page: Annotated[PageParams, Depends(page_params)]) -> Page[VersionRead]:
    """The lineage, newest first (revoked versions included: their weights answer 410)."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    rows, total = service.list_versions(session, model=model, offset=page.offset, limit=page.limit)
    return Page(items=[service.version_read(session, model=model, version=v) for v in rows], total=total,
                next=next_cursor(page, total))


@router.get("/{name}/versions/{number}", response_model=VersionRead)
def get_version(name: str, number: int, caller: Reader, session: SessionDep) -> VersionRead:
    """One version of the lineage: origin, status (active or revoked), metrics and audits."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    return service.version_read(session, model=model, version=service.get_version(session, model=model, number=number),
                                with_audit=True)


@router.get("/{name}/versions/{number}/weights", response_class=FileResponse, responses=problems(410))
def get_weights(name: str, number: int, caller: Reader, session: SessionDep) -> FileResponse:
    """The version's safetensors weights (410 once revoked: its weights were purged)."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    path = service.weights_path(session, model=model, number=number)
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{model.name}-v{number}.safetensors")


@router.get("/{name}/versions/{number}/influence", response_model=InfluencePage)
def get_influence(name: str, number: int, caller: Reader, session: SessionDep,
                  page: Annotated[PageParams, Depends(page_params)],
                  method: Scorer = DEFAULT_SCORER) -> InfluencePage:
    """Self-influence scores of the version's live points, lowest first."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    version = service.get_version(session, model=model, number=number)
    run = runs.influence_run(session, version=version, method=method)
    items, total = runs.influence_items(session, model=model, run=run, offset=page.offset,
                                           limit=page.limit) if run else ([], 0)
    return InfluencePage(
        method=method, status=run.status if run else "absent", version=number, ref=service.ref(model, number),
        threshold=run.threshold if run else None, budget=version.budget,
        computed_by=(run.summary or {}).get("computed_by", {}) if run else {},
        items=[InfluenceItem(point_id=p, score=s) for p, s in items], total=total, next=next_cursor(page, total),
    )


@router.post("/{name}/versions/{number}/influence", status_code=202, response_model=JobAccepted)
def post_influence(name: str, number: int, body: InfluenceCreate, caller: Modeller,
                   session: SessionDep) -> JobAccepted:
    """Score the version with another method (a job)."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    version = service.get_version(session, model=model, number=number)
    job = service.start_scoring(session, model=model, version=version, method=body.method)
    session.commit()
    return JobAccepted(job_id=job.id, status=job.status, kind=job.kind)


@router.post("/{name}/versions/{number}/calibrate", status_code=202, response_model=JobAccepted,
             responses=problems(410))
def calibrate(name: str, number: int, caller: Modeller, session: SessionDep,
              body: CalibrateCreate | None = None) -> JobAccepted:
    """Retrain without the n lowest-influence points for a grid of n (Figure 4.1); sets threshold and budget."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    version = service.get_version(session, model=model, number=number)
    job = service.start_calibration(session, model=model, version=version,
                                    params=(body or CalibrateCreate()).model_dump(exclude_none=True))
    session.commit()
    return JobAccepted(job_id=job.id, status=job.status, kind=job.kind)


@router.post("/{name}/versions/{number}/reference", status_code=202, response_model=JobAccepted,
             responses=problems(410))
def post_reference(name: str, number: int, caller: Modeller, session: SessionDep) -> JobAccepted:
    """Train a new reference pool on this version's data (K shadow models): the evidence behind "free" and the
    audit. Returns the queued (or already running) pool job."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    version = service.get_version(session, model=model, number=number)
    job = evidence.request_pool(session, model=model, version=version)
    session.commit()
    return JobAccepted(job_id=job.id, status=job.status, kind=job.kind)


@router.get("/{name}/versions/{number}/calibration")
def get_calibration(name: str, number: int, caller: Reader, session: SessionDep) -> dict:
    """The calibration curve (JSON): accuracy on removed points per n, per method, and what was chosen."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    return runs.calibration_of(service.get_version(session, model=model, number=number))


@router.get("/{name}/versions/{number}/calibration.png", response_class=FileResponse)
def get_calibration_png(name: str, number: int, caller: Reader, session: SessionDep) -> FileResponse:
    """The calibration curves of the version as a PNG plot (404 until calibrated)."""
    model = service.get_model(session, tenant_id=caller.tenant_id, name=name)
    cal = runs.calibration_of(service.get_version(session, model=model, number=number))
    return FileResponse(artifacts.path_of(cal["png"]), media_type="image/png")
