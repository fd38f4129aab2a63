from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app import artifacts
from app.auth import Modeller, Reader
from app.datasets import service
from app.datasets.enums import DatasetStatus
from app.datasets.schemas import DatasetByReference, DatasetRead
from app.datasets.tables import Dataset
from app.db import SessionDep, new_id
from app.errors import Unprocessable
from app.jobs.outbox import kick
from app.paging import Page, PageParams, next_cursor, page_params
from app.uploads import store_upload
from workers.engine import parquet

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _read(session: SessionDep, ds: Dataset) -> DatasetRead:
    tomb, erased = service.counts(session, dataset_id=ds.id)
    job = service.validation_job(session, dataset_id=ds.id) if ds.format == "parquet" else None
    return DatasetRead.model_validate(ds, from_attributes=True).model_copy(
        update={"n_tombstoned": tomb, "n_erased": erased, "validation_job": job})


@router.post("", status_code=201, response_model=DatasetRead,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "required": ["name", "file"], "properties": {
                     "name": {"type": "string"}, "file": {"type": "string", "format": "binary"}}}},
                 "application/json": {"schema": DatasetByReference.model_json_schema()}}}})
async def create_dataset(request: Request, caller: Modeller, session: SessionDep) -> DatasetRead:
    """Upload an .npz or a Parquet file (multipart `file` + `name`) or register a copy of one in the tenant's
    import directory (JSON `{name, uri}`). A Parquet dataset is `validating` until its validation job (named in
    `validation_job`) decoded every row; then `ready`, or `failed` with the bad rows in `error`."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = DatasetByReference.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            raise Unprocessable(f"expected {{name, uri}}: {exc}") from exc
        uri, sha = service.import_copy(tenant_id=caller.tenant_id, uri=body.uri)
        return _register(session, tenant_id=caller.tenant_id, name=body.name, uri=uri, sha=sha, by_reference=True)
    form = await request.form()
    name, upload = form.get("name"), form.get("file")
    if not isinstance(name, str) or not isinstance(upload, UploadFile):
        raise Unprocessable("multipart form needs a 'name' field and a 'file' (.npz or Parquet)")
    upload.file.seek(0)
    suffix = "parquet" if upload.file.read(len(parquet.MAGIC)) == parquet.MAGIC else "npz"
    uri = artifacts.dataset_uri(new_id(), suffix)
    sha, _ = store_upload(upload, uri=uri)
    return _register(session, tenant_id=caller.tenant_id, name=name, uri=uri, sha=sha, by_reference=False)


def _register(session: SessionDep, *, tenant_id: str, name: str, uri: str, sha: str,
              by_reference: bool) -> DatasetRead:
    """Record the stored file as a dataset in one transaction (the file is deleted if that fails)."""
    try:
        ds = service.register(session, tenant_id=tenant_id, name=name, uri=uri, sha256=sha,
                              by_reference=by_reference)
        session.commit()
    except BaseException:
        artifacts.delete(uri)
        raise
    if ds.status == DatasetStatus.VALIDATING:
        kick()  # publish its validation job (outbox); the relay thread retries
    return _read(session, ds)


@router.get("", response_model=Page[DatasetRead])
def list_datasets(caller: Reader, session: SessionDep,
                  page: Annotated[PageParams, Depends(page_params)]) -> Page[DatasetRead]:
    """The tenant's datasets, newest first, a page at a time (`cursor` from the previous page's `next`)."""
    rows, total = service.list_datasets(session, tenant_id=caller.tenant_id, offset=page.offset, limit=page.limit)
    return Page(items=[_read(session, r) for r in rows], total=total, next=next_cursor(page, total))


@router.get("/{name}", response_model=DatasetRead)
def get_dataset(name: str, caller: Reader, session: SessionDep) -> DatasetRead:
    """One dataset by name or id: its size, test split, digest and the models trained on it."""
    return _read(session, service.get(session, tenant_id=caller.tenant_id, name_or_id=name))
