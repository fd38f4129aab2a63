from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app import artifacts
from app.auth import Modeller, Reader
from app.datasets import service
from app.datasets.schemas import DatasetByReference, DatasetRead
from app.datasets.tables import Dataset
from app.db import SessionDep, new_id
from app.errors import Unprocessable
from app.paging import Page, PageParams, next_cursor, page_params
from app.uploads import store_upload

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _read(session: SessionDep, ds: Dataset) -> DatasetRead:
    tomb, erased = service.counts(session, dataset_id=ds.id)
    return DatasetRead.model_validate(ds, from_attributes=True).model_copy(
        update={"n_tombstoned": tomb, "n_erased": erased})


@router.post("", status_code=201, response_model=DatasetRead,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "required": ["name", "file"], "properties": {
                     "name": {"type": "string"}, "file": {"type": "string", "format": "binary"}}}},
                 "application/json": {"schema": DatasetByReference.model_json_schema()}}}})
async def create_dataset(request: Request, caller: Modeller, session: SessionDep) -> DatasetRead:
    """Upload an .npz (multipart `file` + `name`) or register a copy of one in the tenant's import directory
    (JSON `{name, uri}`)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = DatasetByReference.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            raise Unprocessable(f"expected {{name, uri}}: {exc}") from exc
        uri, sha = service.import_copy(tenant_id=caller.tenant_id, uri=body.uri)
        try:
            ds = service.register(session, tenant_id=caller.tenant_id, name=body.name, uri=uri, sha256=sha,
                                  by_reference=True)
            session.commit()
        except BaseException:
            artifacts.delete(uri)
            raise
        return _read(session, ds)
    form = await request.form()
    name, upload = form.get("name"), form.get("file")
    if not isinstance(name, str) or not isinstance(upload, UploadFile):
        raise Unprocessable("multipart form needs a 'name' field and a 'file' (.npz)")
    uri = f"datasets/{new_id()}.npz"
    sha, _ = store_upload(upload, uri=uri)
    try:
        ds = service.register(session, tenant_id=caller.tenant_id, name=name, uri=uri, sha256=sha)
        session.commit()
    except BaseException:
        artifacts.delete(uri)
        raise
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
