from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.timestamps import Timestamp


class DatasetByReference(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "digits", "uri": "digits.npz"}]})
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    uri: str = Field(min_length=1, max_length=1000, description=(
        "Path of an .npz relative to the tenant's import directory (LETHE_IMPORT_DIR/<tenant id>/); Lethe "
        "registers a copy and never modifies or deletes the original."))


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
    created_at: Timestamp
    n_tombstoned: int = 0
    n_erased: int = 0
