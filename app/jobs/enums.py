"""The jobs domain's vocabulary: str-valued enums, so stored values and JSON are the plain strings."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    TRAIN = "train"
    SCORE = "score"
    REFERENCE = "reference"
    UNLEARN = "unlearn"
    CALIBRATE = "calibrate"
    VALIDATE = "validate"  # a Parquet dataset's rows decoded and checked (no model)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class Verdict(StrEnum):
    """An audit's answer: does the new version treat the request's points like a model retrained without them?"""

    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
