"""The evidence domain's vocabulary: str-valued enums, so stored values and JSON are the plain strings."""

from __future__ import annotations

from enum import StrEnum


class PoolStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a newer pool of the lineage completed


ACTIVE = (PoolStatus.QUEUED, PoolStatus.RUNNING)
