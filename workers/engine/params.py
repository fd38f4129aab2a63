"""Unlearning parameters, validated per algorithm. Pure pydantic: the API validates with it without torch."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FinetuneParams(_Params):
    """Retain-only fine-tuning (the paper's baseline 'FT')."""

    epochs: int = Field(3, ge=1, le=1000)
    lr: float = Field(0.01, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)


class NegGradParams(_Params):
    """NegGrad+: descent on retain, bounded ascent on forget, mixed by alpha."""

    epochs: int = Field(3, ge=1, le=1000)
    lr: float = Field(0.01, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)
    alpha: float = Field(0.9, gt=0, le=1, description="weight of the retain loss; 1-alpha on the forget ascent")
    max_forget_loss: float = Field(5.0, gt=0, description="no ascent on a forget batch whose loss exceeds this")


class RetrainParams(_Params):
    """Retrain from scratch on the retain set with the model's recipe (gold standard, fallback)."""

    epochs: int | None = Field(None, ge=1, le=10_000, description="default: the model's recipe")


class ScrubParams(_Params):
    """SCRUB (Kurmanji et al.): the student (the model) moves away from a frozen teacher (its copy) on the forget
    set (max-steps) and stays close to it on the retain set (min-steps: alpha·KL + gamma·CE)."""

    epochs: int = Field(5, ge=1, le=1000, description="min-step epochs over the retain set")
    max_epochs: int = Field(3, ge=0, le=1000, description="the first max_epochs epochs also run a forget max-pass")
    lr: float = Field(5e-3, gt=0, le=1, description="5e-4 in SCRUB's code, too weak for few-step runs")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(64, ge=1, le=65_536, description="retain batch (min-steps)")
    forget_batch_size: int = Field(8, ge=1, le=65_536, description="forget batch (max-steps)")
    alpha: float = Field(0.001, ge=0, description="weight of KL(teacher‖student) on retain")
    gamma: float = Field(0.99, ge=0, description="weight of cross-entropy on retain")
    temperature: float = Field(4.0, gt=0, le=100, description="distillation temperature of the KLs")
    max_forget_kl: float = Field(1.0, gt=0, description="no max-step on a forget batch whose KL exceeds this "
                                                        "(the ascent otherwise runs away and takes the test set along)")


class Rank1Params(_Params):
    """Fanchuan (NeurIPS 2023 challenge, rank 1): forget outputs to uniform, then rounds of a contrastive forget
    pass and a retain cross-entropy epoch."""

    uniform_epochs: int = Field(1, ge=0, le=100, description="epochs of KL(uniform‖softmax) on the forget set")
    uniform_lr: float = Field(0.005, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    rounds: int = Field(8, ge=1, le=1000, description="contrastive forget pass + retain epoch, this many times")
    contrast_lr: float = Field(3e-4, gt=0, le=1, description="cosine-decayed to 1e-6 over the rounds")
    temperature: float = Field(1.15, gt=0, le=100)
    forget_batch_size: int = Field(16, ge=1, le=65_536)
    retain_lr: float = Field(0.004, gt=0, le=1, description="0.001·256/64 in the winning entry")
    retain_batch_size: int = Field(64, ge=1, le=65_536, description="256 in the winning entry; 64 (and forget 16) "
                                   "keep its ~2.3 retain steps per contrastive step on small sets")
    weight_decay: float = Field(1e-2, ge=0)


class Rank2Params(_Params):
    """Kookmin (rank 2): re-initialise the weights least needed by retain-minus-forget gradients, fine-tune on
    retain with the re-initialised weights at the full lr and the rest at lr_other_factor · lr."""

    reinit_fraction: float = Field(0.3, ge=0, le=1, description="share of each targeted weight tensor re-initialised")
    target: Literal["auto", "conv", "linear", "all"] = Field(
        "auto", description="weights to re-initialise: auto = conv when the model has conv layers, else linear")
    retain_sample: int = Field(1024, ge=1, le=10_000_000, description="retain points in the gradient")
    epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(0.03, gt=0, le=1, description="0.001 in the winning entry (CIFAR, thousands of steps); "
                      "too little to regrow the re-initialised weights on small sets")
    lr_other_factor: float = Field(0.1, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(64, ge=1, le=65_536)
    warmup: float = Field(0.1, ge=0, lt=1, description="share of steps with a linear warm-up; cosine decay after")


class IauParams(_Params):
    """IAU (Liu et al.): one fresh-Adam step on ∇L(retain) − ∇L(forget), full-batch mean gradients."""

    step: Literal["adam", "scaled"] = Field(
        "adam", description="adam: the paper's fresh-Adam step ≈ lr·sign(g), the same size for any forget set; "
                            "scaled: the influence-removal step eta·(|F|/n)·(∇L(forget) − ∇L(retain)), which grows "
                            "with the number of forget points (papers.md)")
    eta: float = Field(3.0, gt=0, le=1e6, description="scaled: step size of the influence update (stands in for "
                       "H⁻¹; ignored by adam); 3 is the largest of 1/3/5/10 that kept retain accuracy on digits")
    lr: float = Field(1e-3, gt=0, le=1, description="adam: the fresh Adam's learning rate (ignored by scaled)")
    steps: int = Field(1, ge=1, le=100, description="the paper takes one; more steps recompute the gradients")
    forget_weight: float = Field(1.0, ge=0, le=100, description="weight of ∇L(forget) in the difference")
    batch_size: int = Field(512, ge=1, le=65_536, description="chunks of the full-batch gradients (memory only)")


class ImuParams(_Params):
    """IMU (Liu et al.): forget-set only; influence-weighted gradient ascent on the classifier head."""

    weighting: Literal["influence", "gradnorm", "uniform"] = Field(
        "influence", description="influence: the paper's √|I_i| on the negative-influence points; gradnorm: "
                                 "per-sample head-gradient norms on all points; uniform: plain ascent")
    selection: Literal["top_negative", "per_point"] = Field(
        "top_negative", description="influence: top_negative is the paper's (only the top_fraction of the I_i<0 "
                                    "points get ascent, built for forgetting a class); per_point gives every "
                                    "requested point max(√|I_i|, floor) (papers.md)")
    top_fraction: float = Field(0.1, gt=0, le=1, description="influence: share of the I_i<0 points kept, by |I_i|")
    floor_quantile: float = Field(0.1, ge=0, le=1, description="per_point: the weight floor is this quantile of "
                                  "√|I_i| over the requested points")
    clip_quantile: float = Field(0.93, gt=0, le=1, description="weights clipped at this quantile")
    fisher_damping: float = Field(0.01, gt=0)
    l1: float = Field(0.2, ge=0, description="weight of ‖θ_head‖₁")
    epochs: int = Field(10, ge=1, le=1000)
    lr: float = Field(5e-4, gt=0, le=1, description="0.01 in the paper, which collapses small models (no retain "
                      "data to hold utility); 5e-4 keeps test accuracy within a point on digits")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, ge=1, le=65_536)
    max_forget_loss: float = Field(10.0, gt=0, description="stop ascending once the weighted forget loss exceeds this")


PARAMS: dict[str, type[_Params]] = {"finetune": FinetuneParams, "neggrad": NegGradParams, "retrain": RetrainParams,
                                    "scrub": ScrubParams, "rank1": Rank1Params, "rank2": Rank2Params,
                                    "iau": IauParams, "imu": ImuParams}


def validate_params(algorithm: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults; ValueError naming the unknown algorithm or the bad parameters."""
    if algorithm not in PARAMS:
        raise ValueError(f"unknown algorithm '{algorithm}'; choose one of {sorted(PARAMS)}")
    try:
        return PARAMS[algorithm].model_validate(params or {}).model_dump()
    except ValidationError as exc:
        fields = sorted(PARAMS[algorithm].model_fields)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" + _did_you_mean(e, fields)
                             for e in exc.errors())
        raise ValueError(f"invalid params for {algorithm}: {problems} (its params: {', '.join(fields)})") from exc


def _did_you_mean(error: Any, fields: list[str]) -> str:
    """For a mistyped parameter name, the closest real ones."""
    if error["type"] != "extra_forbidden" or not error["loc"]:
        return ""
    close = difflib.get_close_matches(str(error["loc"][-1]), fields, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _stronger(algorithm: str, p: dict[str, Any]) -> dict[str, Any] | None:
    """One notch more forgetting for each algorithm (None: nothing stronger than itself, i.e. retrain)."""
    if algorithm in ("finetune", "neggrad"):
        s = p | {"epochs": min(p["epochs"] * 2, 1000), "lr": min(p["lr"] * 2, 1.0)}
        if algorithm == "neggrad":
            s["alpha"] = max(0.5, p["alpha"] - 0.1)
        return s
    if algorithm == "scrub":
        # Two more max-epochs, a looser bound on the ascent, and min-only epochs left after them to repair.
        max_epochs = min(p["max_epochs"] + 2, 998)
        return p | {"max_epochs": max_epochs, "epochs": min(max(p["epochs"], max_epochs + 2), 1000),
                    "max_forget_kl": p["max_forget_kl"] * 2}
    if algorithm == "rank1":
        return p | {"uniform_epochs": min(max(1, p["uniform_epochs"] * 2), 100),
                    "contrast_lr": min(p["contrast_lr"] * 2, 1.0)}
    if algorithm == "rank2":
        return p | {"reinit_fraction": min(1.0, p["reinit_fraction"] + 0.2)}
    if algorithm == "iau":
        return p | {"lr": min(p["lr"] * 2, 1.0), "eta": min(p["eta"] * 2, 1e6)}
    if algorithm == "imu":
        return p | {"lr": min(p["lr"] * 2, 1.0), "top_fraction": min(1.0, p["top_fraction"] * 2)}
    return None


def escalation(algorithm: str, params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The attempts a job makes when audits fail: as asked, once stronger, then retrain."""
    p = validate_params(algorithm, params)
    ladder = [(algorithm, p)]
    stronger = _stronger(algorithm, p)
    if stronger is not None:
        ladder.append((algorithm, validate_params(algorithm, stronger)))
    if algorithm != "retrain":
        ladder.append(("retrain", validate_params("retrain", {})))
    return ladder
