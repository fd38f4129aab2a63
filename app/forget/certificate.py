"""What a deletion certificate says beyond the request itself: the request's whole ledger trail, the subjects
with no data held, and every metric it quotes named in words with its basis."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets.tables import Point
from app.forget.tables import Disposition, ForgetRequest
from app.ledger.tables import LedgerEntry
from app.registry.tables import Model, Version

NO_DATA = "no data held for this subject"

# Every metric a certificate quotes (audits' `after`/`before`/`reference`, `evidence`, points' `separation`):
# what it is and what it was measured on. Keys are the names used in the certificate.
METRICS: dict[str, dict[str, str]] = {
    "ua": {"name": "unlearning accuracy",
           "meaning": "1 − the model's accuracy on the request's points (higher: more forgotten)",
           "basis": "the request's points (free, pruned and unlearned ones), their dataset labels"},
    "fa": {"name": "forget accuracy", "meaning": "the model's accuracy on the request's points (1 − ua)",
           "basis": "the request's points, their dataset labels"},
    "ra": {"name": "retain accuracy", "meaning": "the model's accuracy on data it is meant to keep",
           "basis": "a seeded sample of at most 2,000 training points outside the request"},
    "ta": {"name": "test accuracy", "meaning": "the model's accuracy on held-out data",
           "basis": "the dataset's test split, never trained on"},
    "forget_loss": {"name": "forget loss", "meaning": "mean cross-entropy of the model on the request's points",
                    "basis": "the request's points"},
    "mia": {"name": "loss membership-inference attack (informational)",
            "meaning": "cross-validated AUC of a logistic regression telling the request's points from test points "
                       "by their loss (0.5: chance), with a permutation p-value",
            "basis": "the request's points against an equal sample of the test split; 'insufficient' under "
                     "LETHE_AUDIT_MIN_POINTS points. Informational: the two sets differ in class and difficulty"},
    "mia_conf": {"name": "confidence membership-inference efficacy (informational)",
                 "meaning": "share of the request's points an RBF SVM, trained to tell retain (member) from test "
                            "(non-member) points by the model's confidence, calls non-member (higher: more "
                            "forgotten); by_entropy repeats it on prediction entropy",
                 "basis": "retain and test samples of equal size (at most 1,000), then the request's points"},
    "statistic": {"name": "audit statistic",
                  "meaning": "separation-weighted mean of the new version's standardised confidence margin φ on "
                             "the request's points, 0 = where a model retrained without them puts them, "
                             "1 = where the unchanged model does",
                  "basis": "the lineage's reference pool: K shadow models, each point left out of half of them"},
    "null": {"name": "retrained range",
             "meaning": "two-sided prediction interval (1 − alpha) of the statistic for models that never saw the "
                        "points; lo/hi bound it, center is its middle",
             "basis": "each pool model's own statistic over the request points it left out"},
    "power": {"name": "power", "meaning": "probability that the audit notices a model that did not unlearn "
                                          "(its statistic outside the retrained range); at least min_power needed",
              "basis": "the pool models that were trained with the request's points"},
    "verdict": {"name": "audit verdict",
                "meaning": "passed (inside the retrained range, with power), failed (outside it: side 'remembers' "
                           "or 'over-forgets', or accuracy fell beyond policy) or inconclusive (no valid pool, too "
                           "little power, the unchanged parent would pass too, or a concentrated request without a "
                           "retrain reference)",
                "basis": "statistic, null and power above, then retain and test accuracy against the parent"},
    "separation": {"name": "separation",
                   "meaning": "the point's own membership-inference (LiRA) AUC between pool models trained with and "
                              "without it (0.5: chance); reported, never deciding alone",
                   "basis": "the reference pool's held-out halves"},
    "free_basis": {"name": "basis of free answers",
                   "meaning": "measured (the point belongs to the pool-certified set), provisional (an influence "
                              "score rule, nothing measured) or unmeasured (nothing was free)",
                   "basis": "the reference pool valid when the request arrived"},
    "after": {"name": "new version", "meaning": "metrics of the version the job produced",
              "basis": "as for each metric"},
    "before": {"name": "parent version", "meaning": "metrics of the version the request was made against",
               "basis": "as for each metric"},
    "gap": {"name": "gap to a retrain", "meaning": "|new version − a model retrained without the points| per "
                                                   "metric; avg_gap is their mean",
            "basis": "a retrain reference trained in the job (policy.audit.retrain_reference)"},
}

VERSION_EVENTS = ("version.registered", "version.promoted")


def subjects_without_data(request: ForgetRequest) -> list[dict[str, str]]:
    """Each subject of the request that matched no data, by its keyed hash, stated plainly."""
    return [{"subject_hash": h, "statement": NO_DATA} for h in request.unknown_subjects or []]


def lifecycle_entries(session: Session, *, request: ForgetRequest, job_ids: list[str]) -> list[LedgerEntry]:
    """Every ledger entry of the request's lifecycle, in chain order: received, free, queued, its jobs (started,
    pruned, audits, completed or failed), the versions they registered and promoted, the older versions that
    promotion revoked and purged, the erasures of its points, and its close."""
    tenant = request.tenant_id
    own = set(session.scalars(select(LedgerEntry.id).where(
        LedgerEntry.tenant_id == tenant, LedgerEntry.subject_id.in_([request.id, *job_ids]))))
    versions = list(session.scalars(select(Version).where(Version.job_id.in_(job_ids)))) if job_ids else []
    if versions:
        promoted = list(session.scalars(select(LedgerEntry).where(
            LedgerEntry.tenant_id == tenant, LedgerEntry.subject_id.in_([v.id for v in versions]),
            LedgerEntry.event.in_(VERSION_EVENTS))))
        own |= {e.id for e in promoted}
        for e in promoted:
            if e.event == "version.promoted":
                own |= _revocations_after(session, tenant_id=tenant, seq=e.seq)
    received = session.scalar(select(LedgerEntry.seq).where(
        LedgerEntry.tenant_id == tenant, LedgerEntry.subject_id == request.id,
        LedgerEntry.event == "request.received"))
    own |= _erasures(session, request=request, after=received or 0)
    return list(session.scalars(select(LedgerEntry).where(LedgerEntry.id.in_(own)).order_by(LedgerEntry.seq)))


def _revocations_after(session: Session, *, tenant_id: str, seq: int) -> set[int]:
    """The `version.revoked` entries a promotion appended right after itself: registry.promote_version revokes
    (and purges) every older version in the same transaction, holding the chain's lock, so they are the
    consecutive entries that follow it."""
    found: set[int] = set()
    rows = session.execute(select(LedgerEntry.id, LedgerEntry.event).where(
        LedgerEntry.tenant_id == tenant_id, LedgerEntry.seq > seq).order_by(LedgerEntry.seq).limit(1000))
    for entry_id, event in rows:
        if event != "version.revoked":
            break
        found.add(entry_id)
    return found


def _erasures(session: Session, *, request: ForgetRequest, after: int) -> set[int]:
    """The `points.erased` entries that erased any of the request's points (their features and subject)."""
    rows = session.execute(select(Point.point_id, Point.erased_at).join(
        Disposition, Disposition.point_pk == Point.id).where(Disposition.request_id == request.id)).all()
    erased = {pid for pid, at in rows if at is not None}
    if not erased:
        return set()
    dataset_id = session.scalar(select(Model.dataset_id).where(Model.id == request.model_id))
    found: set[int] = set()
    unnamed: list[int] = []
    for e in session.scalars(select(LedgerEntry).where(
            LedgerEntry.tenant_id == request.tenant_id, LedgerEntry.subject_id == dataset_id,
            LedgerEntry.event == "points.erased", LedgerEntry.seq > after).order_by(LedgerEntry.seq)):
        ids = (e.data or {}).get("point_ids")
        if ids is None:  # a batch over 1,000 names its points by a digest only
            unnamed.append(e.id)
        elif erased & set(ids):
            found.add(e.id)
            erased -= set(ids)
    return found | (set(unnamed) if erased else set())  # points unaccounted for went in a digest-only batch
