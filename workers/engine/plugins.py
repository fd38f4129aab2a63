"""Model kinds as plugins: entry points in the group `lethe.models`, installed into the API and worker alike.

An entry point names an object whose module imports no torch (the API loads it to validate `architecture`;
`build` imports torch when the worker calls it). The object provides:

- `build(config, *, input_shape, n_classes) -> nn.Module` (required);
- `config_model`: a pydantic model the API validates the architecture's config with (optional; without it any
  config is accepted and `build` is the judge);
- `parameter_count(config, *, input_shape, n_classes) -> int`, `layer_widths(config) -> list[int]` and
  `layer_count(config) -> int` (optional, torch-free): the API applies LETHE_MAX_* limits with them;
- `tracked_modules(model) -> list[str]` (optional): the layers the influence scorers and K-FAC see; default every
  Linear and Conv2d;
- `features` (optional tuple of dataset feature kinds, default `("x", "image")`: float tensors): what the kind's
  models read. A text kind says `("text",)`: its batches are the dataset's strings, which only its encode turns
  into tensors. `POST /models` pairing a kind with a dataset it cannot read is a 422 naming why;
- `encode(batch) -> dict of tensors` (optional): a batch of rows (a float tensor; a text kind's: a list of str) as
  the model's keyword inputs; default `{"x": batch}`. Every forward pass of the engine calls
  `model(**encode(batch))`. Scorers that take per-example gradients call a tensor batch's encode under
  torch.func.vmap (tensor operations only); a text batch is encoded once outside it, so a text encode must return
  tensors whose first dimension is the batch (workers/engine/textbag.py is the built-in text kind);
- `loss(model, inputs, y) -> per-example loss tensor` (optional): default cross entropy on `model(**inputs)`.
  Training, gradnorm, LESS (its vmap path), every unlearning algorithm but imu and the audit's losses use it;
  hessian (K-FAC/EK-FAC: cross entropy's Fisher) and imu (refits the head with cross entropy) cannot apply then;
- `unsupported` (optional dict, scorer or algorithm name → why): what cannot apply to the kind's models; the API
  answers 422 naming why when a request asks for one (POST /models, /forget, /influence, /calibrate);
- `norm_policy` (optional str): how BatchNorm and dropout behave during scoring and unlearning; default
  DEFAULT_NORM_POLICY, which the engine applies and every job result records.
"""

from __future__ import annotations

import difflib
import functools
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

GROUP = "lethe.models"
DEFAULT_NORM_POLICY = ("eval: BatchNorm uses and keeps its running statistics and dropout is off while scoring "
                       "and unlearning (training from the recipe runs in train mode)")


# What a plugin's own loss() rules out: the scorers and algorithms that are cross entropy by construction.
CROSS_ENTROPY_ONLY = {
    "hessian": "K-FAC/EK-FAC factors are cross entropy's Fisher (softmax pseudo-gradients), and this kind defines "
               "its own loss()",
    "imu": "imu refits the classifier head with cross entropy, and this kind defines its own loss()",
}


class UnknownKind(ValueError):
    pass


def installed_kinds() -> list[str]:
    """The model kinds installed here, from entry-point metadata alone (nothing imported)."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


@functools.cache
def plugin(kind: str) -> Any:
    """The plugin object of a kind; UnknownKind naming the installed ones."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not found:
        close = difflib.get_close_matches(kind, installed_kinds(), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownKind(f"unknown architecture kind {kind!r}{hint} (installed: {', '.join(installed_kinds())})")
    try:
        obj = found[0].load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is the operator's to fix; the caller gets a 422
        raise UnknownKind(f"architecture kind {kind!r} ({found[0].value}) failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not callable(getattr(obj, "build", None)):
        raise UnknownKind(f"architecture kind {kind!r} ({found[0].value}) has no build()")
    return obj


def validate_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The architecture with its config validated by the kind's config_model; ValueError naming the problem."""
    kind = spec.get("kind")
    if not isinstance(kind, str):
        raise UnknownKind(f"architecture needs a 'kind'; installed: {', '.join(installed_kinds())}")
    obj = plugin(kind)
    model: type[BaseModel] | None = getattr(obj, "config_model", None)
    config = {k: v for k, v in spec.items() if k != "kind"}
    if model is None:
        return {"kind": kind, **config}
    try:
        checked = model.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'architecture'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"architecture {kind!r}: {problems}") from None
    return {"kind": kind, **checked.model_dump(exclude_none=True)}


def cannot_apply(kind: str) -> dict[str, str]:
    """Scorers and unlearning algorithms that cannot apply to this kind's models, each with why (torch-free)."""
    obj = plugin(kind)
    out = dict(CROSS_ENTROPY_ONLY) if callable(getattr(obj, "loss", None)) else {}
    return out | {str(k): str(v) for k, v in (getattr(obj, "unsupported", None) or {}).items()}


def check_applies(kind: str, names: list[str] | tuple[str, ...]) -> None:
    """ValueError naming why, when a scorer or algorithm of `names` cannot apply to this kind's models."""
    refused = cannot_apply(kind)
    for name in names:
        if name in refused:
            raise ValueError(f"{name} cannot apply to a {kind!r} model: {refused[name]}")


TENSOR_FEATURES = ("x", "image")


def reads(kind: str) -> tuple[str, ...]:
    """The dataset feature kinds (x, image, text) this kind's models read (torch-free)."""
    return tuple(getattr(plugin(kind), "features", None) or TENSOR_FEATURES)


def check_reads(kind: str, features: str, dataset: str) -> None:
    """ValueError naming why, when this kind's models cannot read the dataset's features."""
    readable = reads(kind)
    if features in readable:
        return
    if features == "text":
        text_kinds = [k for k in installed_kinds() if "text" in _safe_reads(k)]
        raise ValueError(f"dataset {dataset!r} holds text, and {kind!r} models read feature tensors "
                         f"({', '.join(readable)}), with no encode() to tokenise strings; a text kind can "
                         f"(installed: {', '.join(text_kinds) or 'none'})")
    raise ValueError(f"{kind!r} models read {', '.join(readable)} datasets; dataset {dataset!r} holds "
                     f"{'feature tensors' if features in TENSOR_FEATURES else features} ({features})")


def _safe_reads(kind: str) -> tuple[str, ...]:
    try:
        return reads(kind)
    except UnknownKind:  # a broken plugin is listed nowhere
        return ()


def norm_policy(kind: str) -> str:
    return str(getattr(plugin(kind), "norm_policy", None) or DEFAULT_NORM_POLICY)
