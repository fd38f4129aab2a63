from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.datasets.enums import DatasetStatus
from app.timestamps import Timestamp


class DatasetByReference(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "digits", "uri": "digits.npz"}]})
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    uri: str = Field(min_length=1, max_length=1000, description=(
        "Path of an .npz or Parquet file relative to the tenant's import directory (LETHE_IMPORT_DIR/<tenant id>/); "
        "Lethe registers a copy and never modifies or deletes the original."))


class DatasetRead(BaseModel):
    id: str
    name: str
    n_points: int
    n_test: int
    n_classes: int
    input_shape: list[int]
    has_subjects: bool
    by_reference: bool = Field(False, description=(
        "Registered by reference: Lethe erases points from its own copy; the original file stays outside what "
        "Lethe can erase."))
    sha256: str
    format: str = Field("npz", description="npz or parquet")
    features: str = Field("x", description="parquet: the feature column (x, image or text)")
    status: str = Field(DatasetStatus.READY, description=(
        "ready: models may be registered on it; validating: its validation job is decoding every row; failed: "
        "some rows did not decode (named in error)"))
    error: str | None = None
    validation_job: str | None = Field(None, description="parquet: the job that decodes and checks every row")
    created_at: Timestamp
    n_tombstoned: int = 0
    n_erased: int = 0
