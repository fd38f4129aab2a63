"""Offset cursors and the {items, total, next} envelope shared by every list endpoint; a new secret's answer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from app.errors import Unprocessable

T = TypeVar("T")
S = TypeVar("S", bound=BaseModel)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    next: str | None


def page_of(schema: type[S], rows: Iterable[Any], *, total: int | None = None, next: str | None = None) -> Page[S]:
    """Rows read into `schema` as a page; without `total`, the rows are the whole list (a tenant's keys, hooks)."""
    items = [schema.model_validate(r, from_attributes=True) for r in rows]
    return Page(items=items, total=len(items) if total is None else total, next=next)


def shown_once(session: Any, schema: type[S], row: Any, **secret: Any) -> S:
    """Commit, then answer with the new row and its secret (a key, a signing secret): shown in this answer only,
    and only once it is stored."""
    session.commit()
    return schema.model_validate(
        {name: getattr(row, name) for name in schema.model_fields if name not in secret} | secret)


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
