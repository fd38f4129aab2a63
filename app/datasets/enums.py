"""The datasets domain's vocabulary: str-valued enums, so stored values and JSON are the plain strings."""

from __future__ import annotations

from enum import StrEnum


class DatasetStatus(StrEnum):
    VALIDATING = "validating"  # a Parquet dataset whose validation job decodes every row
    READY = "ready"  # models may be registered and trained on it
    FAILED = "failed"  # some rows did not decode (named in its error)
