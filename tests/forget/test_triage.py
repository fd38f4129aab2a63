from app.forget.triage import Candidate, triage


def c(key: int, score: float | None) -> Candidate:
    return Candidate(key=key, point_id=f"p{key}", score=score)


def test_free_below_threshold_lowest_first_within_budget() -> None:
    cands = [c(1, 0.5), c(2, 0.1), c(3, 0.05), c(4, 2.0), c(5, None)]
    free, pending = triage(cands, threshold=0.6, budget_left=2)
    assert [x.key for x in free] == [3, 2]
    assert sorted(x.key for x in pending) == [1, 4, 5]


def test_no_threshold_or_spent_budget_means_all_pending() -> None:
    cands = [c(1, 0.0), c(2, 0.0)]
    assert triage(cands, threshold=None, budget_left=10)[0] == []
    assert triage(cands, threshold=1.0, budget_left=0)[0] == []


def test_threshold_is_strict_and_nan_is_pending() -> None:
    free, pending = triage([c(1, 1.0), c(2, float("nan"))], threshold=1.0, budget_left=5)
    assert free == [] and len(pending) == 2
