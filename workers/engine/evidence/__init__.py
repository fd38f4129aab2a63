"""Measured evidence from a reference pool: φ statistics, per-point separation, group certification, the audit.

Numpy only (no torch, no scipy at import): the API process runs the cumulative free-set test at request time.

Vocabulary. A reference pool is K shadow models in a balanced design: models 2j and 2j+1 train on complementary
halves of the data, so every point is IN exactly K/2 models and OUT of the others. For each model and point the
pool keeps φ = z_y − logsumexp(z_≠y), the logit-scaled confidence that LiRA (Carlini et al. 2022) models as
Gaussian per point, IN and OUT. φ is standardised per model with that model's held-out test φ (median, IQR), which
removes each model's overall shift (a model trained on more data is more confident everywhere) before models are
compared point by point.

`stats` fits the per-point Gaussians and held-out scores, `certification` the group tests and the certified free
set, `unlearning_audit` the verdict on a new version, `pool` the pool's arrays on disk; this package re-exports
what callers use.
"""

from workers.engine.evidence.certification import (
                                                   Certification,
                                                   certified_group,
                                                   certify,
                                                   default_grid,
                                                   group_test,
                                                   significantly_identifiable,
                                                   within,
)
from workers.engine.evidence.pool import ARRAYS, Pool, load_pool, save_pool
from workers.engine.evidence.stats import (
                                                   Limits,
                                                   Stats,
                                                   cross_scores,
                                                   design,
                                                   halves,
                                                   llr,
                                                   loo_scores,
                                                   per_point_pvalues,
                                                   point_auc,
                                                   point_stats,
                                                   pooled_variances,
                                                   separation,
                                                   standardise,
)
from workers.engine.evidence.unlearning_audit import (
                                                   MIN_WEIGHT,
                                                   AuditRule,
                                                   RetrainedRange,
                                                   audit,
                                                   concentration,
                                                   per_model_aggregates,
                                                   request_concentration,
                                                   size_shift,
                                                   statistic,
)

__all__ = ["ARRAYS", "MIN_WEIGHT", "AuditRule", "Certification", "Limits", "Pool", "RetrainedRange", "Stats", "audit",
           "certified_group", "certify", "concentration", "cross_scores", "default_grid", "design", "group_test",
           "halves", "llr", "load_pool", "loo_scores", "per_model_aggregates", "per_point_pvalues", "point_auc",
           "point_stats", "pooled_variances", "request_concentration", "save_pool", "separation",
           "significantly_identifiable", "size_shift", "standardise", "statistic", "within"]
