"""The registry's vocabulary: str-valued enums, so stored values and JSON are the plain strings."""

from __future__ import annotations

from enum import StrEnum


class VersionStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"  # superseded by an unlearned version: weights, checkpoints and scores purged


class VersionSource(StrEnum):
    TRAIN = "train"
    UPLOAD = "upload"
    UNLEARN = "unlearn"


class RunStatus(StrEnum):
    """An influence run's (one method's scores of one version)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its version was revoked before the scores were stored
