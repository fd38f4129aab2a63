"""The OpenDSR domain's vocabulary: str-valued enums, so stored values and JSON are the plain strings."""

from __future__ import annotations

from enum import StrEnum


class OpenDsrStatus(StrEnum):
    """A subject request's status as OpenDSR names it (aggregated over its forget requests)."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


OPEN = (OpenDsrStatus.PENDING, OpenDsrStatus.IN_PROGRESS)
