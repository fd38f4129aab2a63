"""Finding a request's points (by id, by subject's keyed hash) and their dispositions, in bounded chunks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets.tables import Point
from app.forget.enums import LIVE, REMOVED
from app.forget.tables import Disposition
from app.identity import keyed_hash

CHUNK = 10_000  # ids per IN (...) list


def chunks(values: list[Any]) -> list[list[Any]]:
    return [values[i:i + CHUNK] for i in range(0, len(values), CHUNK)]


def by_id(session: Session, *, dataset_id: str, point_ids: list[str]) -> dict[str, Point]:
    found: dict[str, Point] = {}
    for chunk in chunks(sorted(set(point_ids))):
        for p in session.scalars(select(Point).where(Point.dataset_id == dataset_id, Point.point_id.in_(chunk))):
            found[p.point_id] = p
    return found


def by_subject(session: Session, *, dataset_id: str, subject_ids: list[str]) -> tuple[list[Point], list[str]]:
    hashes = {keyed_hash(s): s for s in dict.fromkeys(subject_ids)}
    points: list[Point] = []
    seen: set[str] = set()
    for chunk in chunks(list(hashes)):
        for p in session.scalars(select(Point).where(Point.dataset_id == dataset_id, Point.subject_hash.in_(chunk))):
            points.append(p)
            seen.add(p.subject_hash or "")
    return points, [h for h in hashes if h not in seen]  # keyed hashes: a subject id is never stored in clear


def live_dispositions(session: Session, *, model_id: str, point_pks: list[int]) -> dict[int, Disposition]:
    """Each point's strongest disposition in this lineage: final beats pending."""
    out: dict[int, Disposition] = {}
    for chunk in chunks(point_pks):
        for d in session.scalars(select(Disposition).where(Disposition.model_id == model_id,
                                                           Disposition.point_pk.in_(chunk),
                                                           Disposition.disposition.in_(LIVE))):
            if d.point_pk not in out or d.disposition in REMOVED:
                out[d.point_pk] = d
    return out
