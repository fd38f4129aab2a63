"""One timestamp format in every API answer: RFC 3339, UTC, microseconds, `Z` (2026-12-01T14:51:10.745704Z)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema


def rfc3339(value: datetime) -> str:
    """`value` in UTC as 2026-12-01T14:51:10.745704Z (naive values are UTC: SQLite stores no offset)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Pydantic's own rendering drops zero microseconds and keeps a database session's offset (+01:00 on a Postgres
# not set to UTC): every schema's datetimes go through this one serializer instead.
Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json"),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
