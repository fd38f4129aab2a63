"""Offset cursors and the {items, total, next} envelope shared by every list endpoint."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from app.errors import Unprocessable

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    next: str | None


class PageParams(BaseModel):
    limit: int
    offset: int


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        offset = int(json.loads(base64.urlsafe_b64decode(padded))["o"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Unprocessable("invalid cursor") from exc
    if offset < 0:
        raise Unprocessable("invalid cursor")
    return offset


def page_params(
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: Annotated[str | None, Query()] = None
) -> PageParams:
    return PageParams(limit=limit, offset=decode_cursor(cursor))


def next_cursor(params: PageParams, total: int) -> str | None:
    end = params.offset + params.limit
    return encode_cursor(end) if end < total else None
