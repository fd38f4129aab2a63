"""What the engine asks of a model beyond forward(): its plugin's encode/loss, tracked modules and BatchNorm policy.

Every forward pass of the engine goes through `forward` (the plugin's `encode(batch) -> dict of tensors`, default
`{"x": batch}`, then `model(**inputs)`), and every loss through `losses` (the plugin's `loss(model, inputs, y)`,
per example, default cross entropy on the logits). The batch is the dataset's feature rows as a float tensor, or
the strings of a text dataset (which only a plugin's encode can turn into tensors).

The policy (recorded in every scoring and unlearning result): scoring runs the model in eval mode (BatchNorm
normalises with its running statistics, dropout off, so one point's score never depends on its batch); the
unlearning algorithms run with BatchNorm frozen (eval mode whatever the algorithm sets: running statistics
neither used from the batch nor updated, since the forget set's statistics would otherwise leak into and
survive in them) while dropout follows the algorithm; retrain trains a fresh model from the recipe, in train
mode like training. A plugin may state its own policy in `norm_policy`; the engine applies the above."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from workers.engine import plugins
from workers.engine.rows import Batch

NORMS = (nn.modules.batchnorm._BatchNorm,)
SCORING = "eval: BatchNorm normalises with its running statistics, dropout off"
UNLEARNING = "BatchNorm frozen (running statistics used and not updated); dropout as the algorithm trains"
RETRAIN = "train mode from the recipe, like training (a fresh model's BatchNorm statistics are fitted anew)"


def kind_of(model: nn.Module) -> Any | None:
    kind = getattr(model, "lethe_kind", None)
    return plugins.plugin(kind) if kind else None


def _hook(model: nn.Module, name: str) -> Any | None:
    kind = kind_of(model)
    return getattr(kind, name, None) if kind is not None else None


def _no_text(model: nn.Module, x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        kind = getattr(model, "lethe_kind", None) or type(model).__name__
        raise ValueError(f"a {kind!r} model has no encode() to turn text into tensors: a text dataset needs a text "
                         "plugin's model")


def encode(model: nn.Module, x: Batch) -> dict[str, torch.Tensor]:
    """The model's inputs for a batch of rows (a float tensor, or a text dataset's strings): the plugin's
    encode(batch), default {"x": batch}."""
    hook = _hook(model, "encode")
    if hook is None:
        _no_text(model, x)
    return dict(hook(x)) if hook is not None else {"x": x}


def forward(model: nn.Module, x: Batch) -> torch.Tensor:
    """Logits of a batch of rows: model(**encode(batch)); without an encode hook model(batch), positionally
    (any nn.Module works as a library model, whatever its forward's argument is called)."""
    hook = _hook(model, "encode")
    if hook is None:
        _no_text(model, x)
    return model(**hook(x)) if hook is not None else model(x)


def custom_loss(model: nn.Module) -> bool:
    return _hook(model, "loss") is not None


def losses(model: nn.Module, x: Batch, y: torch.Tensor) -> torch.Tensor:
    """Per-example losses of a batch: the plugin's loss(model, inputs, y), default cross entropy on the logits."""
    hook = _hook(model, "loss")
    if hook is not None:
        return hook(model, encode(model, x), y).reshape(len(y))
    return F.cross_entropy(forward(model, x), y, reduction="none")


def logits_and_losses(model: nn.Module, x: Batch, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-example losses of a batch: one forward pass, two when the plugin defines its own loss."""
    if custom_loss(model):
        return forward(model, x), losses(model, x, y)
    logits = forward(model, x)
    return logits, F.cross_entropy(logits, y, reduction="none")


class _Loss(nn.Module):
    """The model's per-example loss as a module, so torch.func.functional_call can swap its parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses(self.model, x, y)


def functional_losses(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                      x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """losses(model, x, y) with the model's parameters and buffers replaced (torch.func: vmap, grad, jacrev)."""
    from torch.func import functional_call

    state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
    return functional_call(_Loss(model), state, (x, y))


class _EncodedLoss(nn.Module):
    """Per-example losses from inputs already encoded (a text batch's: tokenised outside torch.func)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        hook = _hook(self.model, "loss")
        if hook is not None:
            return hook(self.model, inputs, y).reshape(len(y))
        return F.cross_entropy(self.model(**inputs), y, reduction="none")


def example_loss(model: nn.Module, buffers: dict[str, torch.Tensor], x: Batch) -> tuple[Any, Any]:
    """(loss(params, x_i, y_i) of one example, the batch to map it over) for torch.func's grad under vmap.

    A tensor batch is mapped over as it is (encode runs inside vmap, on one row). A text batch is encoded once,
    outside (tokenising is Python, not tensor operations), and the dict of tensors it gives is mapped over: a text
    plugin's encode must return tensors whose first dimension is the batch."""
    from torch.func import functional_call

    if isinstance(x, torch.Tensor):
        def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return functional_losses(model, p, buffers, xi.unsqueeze(0), yi.unsqueeze(0))[0]

        return loss, x
    inputs = encode(model, x)
    wrapper = _EncodedLoss(model)

    def encoded_loss(p: dict[str, torch.Tensor], xi: dict[str, torch.Tensor], yi: torch.Tensor) -> torch.Tensor:
        state = {f"model.{k}": v for k, v in {**p, **buffers}.items()}
        one = {k: v.unsqueeze(0) for k, v in xi.items()}
        return functional_call(wrapper, state, (one, yi.unsqueeze(0)))[0]

    return encoded_loss, inputs


def take(inputs: Any, part: Any) -> Any:
    """Rows `part` of what example_loss maps over (a tensor, or a dict of batch-first tensors)."""
    return {k: v[part] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[part]


def tracked_names(model: nn.Module) -> list[str] | None:
    """The plugin's tracked_modules(model), or None for the default (every Linear and Conv2d)."""
    kind = kind_of(model)
    hook = getattr(kind, "tracked_modules", None) if kind is not None else None
    return list(hook(model)) if hook is not None else None


def norm_record(model: nn.Module, *, phase: str, algorithm: str | None = None) -> dict[str, Any]:
    """The policy applied in this phase, for the job result."""
    norms = sum(isinstance(m, NORMS) for m in model.modules())
    applied = SCORING if phase == "scoring" else RETRAIN if algorithm == "retrain" else UNLEARNING
    kind = kind_of(model)
    stated = getattr(kind, "norm_policy", None) if kind is not None else None
    record: dict[str, Any] = {"applied": applied, "batchnorm_layers": norms,
                              "dropout_layers": sum(isinstance(m, nn.Dropout) for m in model.modules())}
    if stated:
        record["plugin_states"] = str(stated)
    return record


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


@contextlib.contextmanager
def frozen_norms(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block BatchNorm layers stay in eval mode whatever model.train() the algorithm calls."""
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    for m in norms:
        m.train = types.MethodType(_stay_eval, m)  # type: ignore[method-assign]
        m.eval()
    try:
        yield model
    finally:
        for m in norms:
            del m.train
