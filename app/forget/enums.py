"""The forget domain's vocabulary: str-valued enums, so stored values and JSON are the plain strings."""

from __future__ import annotations

from enum import StrEnum


class RequestStatus(StrEnum):
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED)


class DispositionStatus(StrEnum):
    """What happened to one point of a request, per lineage (DESIGN: Statuses)."""

    FREE = "free"  # answered at request time: measured (or, opted in, provisionally) unidentifiable
    PENDING = "pending"
    PRUNED = "pruned"  # dropped inside a job as low-influence, covered by its audit
    UNLEARNED = "unlearned"
    ALREADY_FORGOTTEN = "already_forgotten"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A point is out of the lineage's model once final; pending counts as live too (its job will remove it).
REMOVED = (DispositionStatus.FREE, DispositionStatus.PRUNED, DispositionStatus.UNLEARNED)
LIVE = (*REMOVED, DispositionStatus.PENDING)
