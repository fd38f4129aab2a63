"""The free decision: pure, so it can be tested alone."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    key: int
    point_id: str
    score: float | None


def triage(candidates: list[Candidate], *, threshold: float | None, budget_left: int) -> tuple[
        list[Candidate], list[Candidate]]:
    """Split into (free, pending): free = score below threshold, lowest first, while budget lasts."""
    if threshold is None or budget_left <= 0:
        return [], list(candidates)
    below = sorted((c for c in candidates if c.score is not None and not math.isnan(c.score)
                    and c.score < threshold), key=lambda c: (c.score, c.point_id))
    free = below[:budget_left]
    chosen = {c.key for c in free}
    return free, [c for c in candidates if c.key not in chosen]
