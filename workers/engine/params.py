"""Unlearning parameters, validated per algorithm. Pure pydantic: the API validates with it without torch."""

from __future__ import annotations

from typing import Any

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


PARAMS: dict[str, type[_Params]] = {"finetune": FinetuneParams, "neggrad": NegGradParams, "retrain": RetrainParams}


def validate_params(algorithm: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults; ValueError naming the unknown algorithm or the bad parameters."""
    if algorithm not in PARAMS:
        raise ValueError(f"unknown algorithm '{algorithm}'; choose one of {sorted(PARAMS)}")
    try:
        return PARAMS[algorithm].model_validate(params or {}).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid params for {algorithm}: {problems}") from exc


def escalation(algorithm: str, params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The attempts a job makes when audits fail: as asked, once stronger, then retrain."""
    p = validate_params(algorithm, params)
    ladder = [(algorithm, p)]
    if algorithm in ("finetune", "neggrad"):
        stronger = p | {"epochs": min(p["epochs"] * 2, 1000), "lr": min(p["lr"] * 2, 1.0)}
        if algorithm == "neggrad":
            stronger["alpha"] = max(0.5, p["alpha"] - 0.1)
        ladder.append((algorithm, validate_params(algorithm, stronger)))
    if algorithm != "retrain":
        ladder.append(("retrain", validate_params("retrain", {})))
    return ladder
