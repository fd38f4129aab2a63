"""Each job kind's params as a pydantic model: a job's `params` column is parsed once, here, so the defaults a
worker applies are the ones the API documents (train, score and calibrate take their request bodies as is)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.registry.schemas import CalibrateCreate as CalibrateParams
from app.registry.schemas import InfluenceCreate as ScoreParams
from app.registry.schemas import ReferencePolicy
from app.registry.schemas import TrainCreate as TrainParams


class UnlearnParams(BaseModel):
    """An unlearning job's algorithm and its validated params (requests with the same ones coalesce into it)."""

    model_config = ConfigDict(extra="forbid")
    algorithm: str
    params: dict[str, Any] = Field(default_factory=dict)


class ReferenceParams(BaseModel):
    """The pool a reference job fits."""

    model_config = ConfigDict(extra="forbid")
    pool_id: str
    k: int
    shift_models: int = ReferencePolicy.model_fields["shift_models"].default


__all__ = ["CalibrateParams", "ReferenceParams", "ScoreParams", "TrainParams", "UnlearnParams"]
