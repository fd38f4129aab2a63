from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.timestamps import Timestamp
from workers.engine import plugins
from workers.engine.catalog import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    DEFAULT_REFERENCE_MARGIN,
    DEFAULT_SCORER,
    SCORERS,
    Scorer,
)
from workers.engine.params import validate_params

__all__ = ["ALGORITHMS", "SCORERS", "Scorer"]  # the catalog's names, re-exported for the API's modules


class Architecture(BaseModel):
    """`{"kind": <an installed lethe.models entry point>, ...its config}`, validated by the kind's config_model
    (loaded from the plugin's torch-free module; an unknown kind names the installed ones)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"kind": "mlp", "hidden": [128, 64]}]})
    kind: str = Field(description="a model kind installed here (GET /models/kinds lists them)")

    @model_validator(mode="after")
    def _config(self) -> Architecture:
        checked = plugins.validate_config(self.model_dump())
        for key in list(self.__pydantic_extra__ or {}):
            delattr(self, key)
        for key, value in checked.items():
            setattr(self, key, value)
        return self


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    checkpoints: int = Field(3, ge=0, le=100, description="training checkpoints kept for LESS scoring (0: none)")
    grad_restriction: float = Field(0.0, ge=0, le=10, description="IAU's gradient-restriction term: adds "
                                    "α·mean‖∇θ ℓ_i‖ to the training loss, so later single-step unlearning works")


class AuditPolicy(BaseModel):
    """Per-model audit settings; unset ones are the server's LETHE_AUDIT_* settings."""

    model_config = ConfigDict(extra="forbid")
    max_acc_drop: float | None = Field(None, ge=0, le=1, description="RA and TA may fall at most this much")
    alpha: float | None = Field(None, gt=0, lt=0.5, description="the null range is the retrained pool models' "
                                "two-sided (1 - alpha) prediction interval (default LETHE_AUDIT_ALPHA, 0.01)")
    min_power: float | None = Field(None, gt=0, lt=1, description="below this power the audit is inconclusive")
    on_inconclusive: Literal["escalate", "accept"] | None = Field(None, description=(
        "an inconclusive audit either escalates (stronger settings, then retraining) or is accepted: the version "
        "is promoted and its certificate says 'inconclusive' (default LETHE_AUDIT_ON_INCONCLUSIVE, escalate)"))
    mia_auc_max: float | None = Field(None, ge=0.5, le=1, description="informational loss-MIA (forget vs test) "
                                      "threshold: reported, never decides (forget and test points differ)")
    mia_alpha: float | None = Field(None, gt=0, lt=1, description="informational, as mia_auc_max")
    retrain_reference: bool = Field(False, description=(
        "Also retrain a reference without the forget set in every unlearning job (one retraining's cost): the "
        "audit then reports each metric's gap to it and Avg Gap, and a concentrated request (which breaks the "
        "pool's per-point null) is judged around the reference's statistic instead of being inconclusive."))
    reference_margin: float | None = Field(None, ge=0, le=0.5, description=(
        "informational: the loss-MIA margin over the retrain reference's AUC that is reported "
        f"(default {DEFAULT_REFERENCE_MARGIN})"))


class ReferencePolicy(BaseModel):
    """The lineage's reference pool: the shadow models that measure "free" and the audit."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=0, le=256, description="shadow models (even, >= 4; 0 disables the pool; "
                          "default LETHE_REFERENCE_K, 16)")
    shift_models: int = Field(4, ge=0, le=8, description="full-size models, each leaving out a disjoint 10%, "
                              "that measure the shadow/deployed size mismatch")

    @model_validator(mode="after")
    def _even(self) -> ReferencePolicy:
        if self.k not in (None, 0) and (self.k < 4 or self.k % 2):
            raise ValueError("reference.k must be 0 or an even number >= 4")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scorer: Scorer = DEFAULT_SCORER
    algorithm: str = Field(DEFAULT_ALGORITHM, description="an unlearning algorithm (see ALGORITHMS)")
    params: dict[str, Any] = Field(default_factory=dict)
    q_forget: float = Field(0.0, ge=0.0, lt=1.0)
    q_retain: float = Field(0.0, ge=0.0, lt=1.0)
    audit: AuditPolicy = Field(default_factory=AuditPolicy)
    reference: ReferencePolicy = Field(default_factory=ReferencePolicy)

    @model_validator(mode="after")
    def _known(self) -> Policy:
        # Validated against the engine's parameter models, which import no torch.
        self.params = validate_params(self.algorithm, self.params)
        return self


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "digits", "dataset": "digits", "architecture": {"kind": "mlp", "hidden": [128]},
         "recipe": {"epochs": 20, "lr": 0.001}, "policy": {"algorithm": "finetune", "scorer": "gradnorm"}}]})
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: str
    architecture: Architecture
    recipe: Recipe = Field(default_factory=Recipe)
    policy: Policy = Field(default_factory=Policy)


class InfluenceSummary(BaseModel):
    method: str
    status: str
    threshold: float | None
    n: int | None
    job_id: str | None
    computed_by: dict[str, Any] = Field(default_factory=dict)


class VersionRead(BaseModel):
    version: int
    ref: str
    sha256: str
    source: str
    status: str
    parent: int | None
    request_id: str | None
    job_id: str | None
    threshold: float | None
    budget: int | None
    n_train: int | None
    metrics: dict[str, Any]
    created_at: Timestamp
    revoked_at: Timestamp | None
    influence: list[InfluenceSummary] = []
    audit: dict[str, Any] | None = None


class ModelRead(BaseModel):
    id: str
    name: str
    dataset: str
    architecture: dict[str, Any]
    recipe: dict[str, Any]
    policy: dict[str, Any]
    current: int | None
    ref: str | None
    free_spent: int
    reference: dict[str, Any] | None = Field(None, description=(
        "the lineage's reference pool: status, K, points measured and certified free, and whether it is still "
        "valid (removals since it was fitted under LETHE_POOL_MAX_REMOVED), and why not when it is not"))
    versions: list[VersionRead] = []
    created_at: Timestamp


class JobAccepted(BaseModel):
    job_id: str
    status: str
    kind: str


class VersionCreated(BaseModel):
    version: int
    ref: str
    sha256: str
    current: int | None
    score_job_id: str | None


class InfluenceItem(BaseModel):
    point_id: str
    score: float


class InfluencePage(BaseModel):
    method: str
    status: str
    version: int
    ref: str
    threshold: float | None
    budget: int | None
    computed_by: dict[str, Any] = Field(default_factory=dict, description=(
        "how the scores were computed: hessian's approximation, damping and whether factors were reused; "
        "less's source (training checkpoints, or the final weights when the version has none)"))
    items: list[InfluenceItem]
    total: int
    next: str | None


class InfluenceCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"method": "gradnorm"}]})
    method: Scorer = DEFAULT_SCORER


class TrainCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"promote": True}]})
    promote: bool = True


class CalibrateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"method": "gradnorm", "epsilon": 0.01, "auc_max": 0.55}]})
    method: Scorer | None = Field(None, description="the scorer whose curve sets threshold and budget; default: "
                                  "the policy's scorer")
    compare: list[Scorer] | None = Field(None, description="other scorers whose removal curves are measured "
                                         "beside it (scored first if needed); default: all of them")
    epsilon: float = Field(0.01, ge=0, le=1, description="free: accuracy on removed points within this of the full")
    prune_epsilon: float = Field(0.03, ge=0, le=1, description="the looser bound for job-time pruning")
    auc_max: float = Field(0.55, ge=0.5, le=1, description="removed points' loss AUC, retrained vs full model")
    grid: list[int] | None = Field(None, max_length=50, description="removal counts; default 1%..20% of the data")
