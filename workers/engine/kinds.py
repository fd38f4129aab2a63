"""The built-in model kinds (linear, mlp, cnn, resnet), registered as `lethe.models` entry points in pyproject.

Torch-free: the API imports these to validate architectures and apply size limits; `build` imports torch."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LayeredConfig(BaseModel):
    """linear, mlp and cnn share one config, as the `architecture` JSON always has."""

    model_config = ConfigDict(extra="forbid")
    hidden: list[int] | int | None = Field(None, description="mlp: hidden widths; cnn: width of the dense layer")
    channels: list[int] | None = Field(None, description="cnn: output channels of each conv block")
    dropout: float | None = Field(None, ge=0.0, lt=1.0)


def _chw(input_shape: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) as the engine's image_shape reads it, without its checks (build applies them)."""
    shape = list(input_shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        return (1, side, side)
    c, h, w = ([1, *shape] if len(shape) == 2 else shape + [1] * (3 - len(shape)))[:3]
    return (c, h, w)


class _Layered:
    config_model = LayeredConfig

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def build(self, config: dict[str, Any], *, input_shape: tuple[int, ...], n_classes: int) -> Any:
        from workers.engine.architectures import BUILDERS

        return BUILDERS[self.kind](config, tuple(input_shape), n_classes)

    @staticmethod
    def layer_widths(config: dict[str, Any]) -> list[int]:
        hidden = config.get("hidden")
        return [*([hidden] if isinstance(hidden, int) else (hidden or [])), *(config.get("channels") or [])]

    @staticmethod
    def layer_count(config: dict[str, Any]) -> int:
        hidden = config.get("hidden")
        return max(len(hidden) if isinstance(hidden, list) else 0, len(config.get("channels") or []))

    def parameter_count(self, config: dict[str, Any], *, input_shape: list[int], n_classes: int) -> int:
        """Parameters of the model build() makes (the same arithmetic, without torch)."""
        hidden = config.get("hidden")
        if self.kind == "linear":
            return (math.prod(input_shape) + 1) * n_classes
        if self.kind == "mlp":
            widths = [math.prod(input_shape), *([hidden] if isinstance(hidden, int) else (hidden or [128])),
                      n_classes]
            return sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
        c, h, w = _chw(input_shape)
        total = 0
        for out in config.get("channels") or [16, 32]:
            total += (c * 9 + 1) * out
            if min(h, w) >= 2:
                h, w = h // 2, w // 2
            c = out
        dense = (hidden[0] if isinstance(hidden, list) and hidden else hidden) or 64
        return total + (c * h * w + 1) * dense + (dense + 1) * n_classes


    def state_shapes(self, config: dict[str, Any], *, input_shape: list[int], n_classes: int
                     ) -> dict[str, list[int]]:
        """The state dict build() makes, name → shape (the API checks uploaded weights against it)."""
        hidden = config.get("hidden")
        shapes: dict[str, list[int]] = {}
        i = 0

        def linear(cin: int, out: int) -> None:
            shapes[f"net.{i}.weight"], shapes[f"net.{i}.bias"] = [out, cin], [out]

        if self.kind in ("linear", "mlp"):
            width = math.prod(input_shape)
            hiddens = [] if self.kind == "linear" else ([hidden] if isinstance(hidden, int) else (hidden or [128]))
            for h in hiddens:
                linear(width, int(h))
                i += 2 + int(bool(config.get("dropout")))
                width = int(h)
            linear(width, n_classes)
            return shapes
        c, h, w = _chw(input_shape)
        for out in config.get("channels") or [16, 32]:
            shapes[f"net.{i}.weight"], shapes[f"net.{i}.bias"] = [int(out), c, 3, 3], [int(out)]
            i += 2
            if min(h, w) >= 2:
                i += 1
                h, w = h // 2, w // 2
            c = int(out)
        dense = int((hidden[0] if isinstance(hidden, list) and hidden else hidden) or 64)
        i += 1  # Flatten
        linear(c * h * w, dense)
        i += 2
        linear(dense, n_classes)
        return shapes


class ResNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(64, ge=1, description="channels of the first stage; each later stage doubles them")
    blocks: list[int] = Field([2, 2, 2, 2], min_length=1, max_length=8,
                              description="basic blocks per stage ([2, 2, 2, 2] is ResNet-18)")


class _ResNet:
    """CIFAR-style ResNet (3x3 stem, no max-pool, basic blocks with BatchNorm); [2, 2, 2, 2] is ResNet-18."""

    config_model = ResNetConfig
    norm_policy = ("eval: BatchNorm normalises with its frozen running statistics (neither updated nor "
                   "batch-dependent) while scoring and unlearning; training from the recipe updates them")

    def build(self, config: dict[str, Any], *, input_shape: tuple[int, ...], n_classes: int) -> Any:
        from workers.engine.architectures.resnet import ResNet

        cfg = ResNetConfig.model_validate(config)
        return ResNet(input_shape=tuple(input_shape), n_classes=n_classes, width=cfg.width, blocks=cfg.blocks)

    @staticmethod
    def layer_widths(config: dict[str, Any]) -> list[int]:
        cfg = ResNetConfig.model_validate(config)
        return [cfg.width * 2 ** (len(cfg.blocks) - 1)]

    @staticmethod
    def layer_count(config: dict[str, Any]) -> int:
        return 2 * sum(ResNetConfig.model_validate(config).blocks) + 2

    @staticmethod
    def parameter_count(config: dict[str, Any], *, input_shape: list[int], n_classes: int) -> int:
        cfg = ResNetConfig.model_validate(config)
        c = _chw(input_shape)[0]
        total = c * 9 * cfg.width + 2 * cfg.width  # stem conv (no bias) + BatchNorm
        cin = cfg.width
        for stage, n in enumerate(cfg.blocks):
            out = cfg.width * 2 ** stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                total += cin * 9 * out + 2 * out + out * 9 * out + 2 * out
                if stride != 1 or cin != out:
                    total += cin * out + 2 * out
                cin = out
        return total + (cin + 1) * n_classes

    @staticmethod
    def state_shapes(config: dict[str, Any], *, input_shape: list[int], n_classes: int) -> dict[str, list[int]]:
        cfg = ResNetConfig.model_validate(config)
        shapes: dict[str, list[int]] = {}

        def bn(prefix: str, n: int) -> None:
            for key in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.{key}"] = [n]
            shapes[f"{prefix}.num_batches_tracked"] = []

        shapes["conv1.weight"] = [cfg.width, _chw(input_shape)[0], 3, 3]
        bn("bn1", cfg.width)
        cin = cfg.width
        for stage, n in enumerate(cfg.blocks):
            out = cfg.width * 2 ** stage
            for i in range(n):
                p = f"stages.{stage}.{i}"
                shapes[f"{p}.conv1.weight"] = [out, cin, 3, 3]
                bn(f"{p}.bn1", out)
                shapes[f"{p}.conv2.weight"] = [out, out, 3, 3]
                bn(f"{p}.bn2", out)
                if (stage > 0 and i == 0) or cin != out:
                    shapes[f"{p}.shortcut.0.weight"] = [out, cin, 1, 1]
                    bn(f"{p}.shortcut.1", out)
                cin = out
        shapes["fc.weight"], shapes["fc.bias"] = [n_classes, cin], [n_classes]
        return shapes


LINEAR, MLP, CNN = _Layered("linear"), _Layered("mlp"), _Layered("cnn")
RESNET = _ResNet()
