"""The built-in text kind `bag`: a hashing tokenizer written here and an embedding-bag classifier.

Registered as the `lethe.models` entry point `bag` like the other built-ins, and torch-free at import (the API
loads it to validate configs and apply size limits). It reads text datasets only (`features`), and shows the
plugin protocol for text: the engine hands `encode` a batch of the dataset's strings; `encode` tokenises them
and returns batch-first tensors, which the engine passes to the model as keywords.

Tokenising needs no vocabulary, no download and no config: lowercased words (runs of letters and digits) and
each pair of adjacent words, each hashed with CRC-32 (stable across processes and machines, unlike hash()) to a
positive id; 0 pads. A text keeps its first MAX_TOKENS tokens. `encode(batch)` returns
`{"ids": int64 [B, L], "mask": float32 [B, L]}`, L the batch's longest text; the model folds each id into its
`buckets` embedding rows (ids mod buckets), so one tokenizer serves every config.

The model: the mean of the tokens' embeddings under the mask (an embedding bag), a hidden ReLU layer, a linear
head. Its embedding is not a Linear or Conv2d layer: gradnorm and LESS take its per-example gradients with
torch.func over the encoded tensors, and hessian's K-FAC sees the two Linear layers only (its result names the
embedding among the untracked parameters). No BatchNorm and no dropout: scoring and unlearning see the same
network as training.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS = 256  # tokens kept per text (words and word pairs), the rest ignored
WORD = re.compile(r"[^\W_]+", re.UNICODE)


def tokens(text: str) -> list[int]:
    """The token ids of a text: its lowercased words, then its adjacent word pairs, hashed to 1..2^31-1."""
    words = WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return [(zlib.crc32(g.encode("utf-8")) & 0x7FFFFFFF) or 1 for g in grams[:MAX_TOKENS]]


class BagConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    buckets: int = Field(4096, ge=2, le=1 << 20, description="embedding rows the hashed tokens share")
    dim: int = Field(32, ge=1, le=1024, description="embedding width")
    hidden: int = Field(32, ge=1, le=4096, description="width of the hidden layer")


class BagPlugin:
    """`bag`: text classification by an embedding bag over hashed words and word pairs."""

    config_model = BagConfig
    features = ("text",)
    norm_policy = "no BatchNorm or dropout: scoring, unlearning and training see the same network"

    def build(self, config: dict[str, Any], *, input_shape: tuple[int, ...], n_classes: int) -> Any:
        from workers.engine.architectures.bag import EmbeddingBagClassifier

        cfg = BagConfig.model_validate(config)
        return EmbeddingBagClassifier(buckets=cfg.buckets, dim=cfg.dim, hidden=cfg.hidden, n_classes=n_classes)

    @staticmethod
    def encode(batch: list[str]) -> dict[str, Any]:
        import torch

        ids = [tokens(text) for text in batch]
        width = max((len(t) for t in ids), default=0) or 1
        out = torch.zeros((len(ids), width), dtype=torch.int64)
        mask = torch.zeros((len(ids), width), dtype=torch.float32)
        for i, t in enumerate(ids):
            out[i, :len(t)] = torch.as_tensor(t, dtype=torch.int64)
            mask[i, :len(t)] = 1.0
        return {"ids": out, "mask": mask}

    @staticmethod
    def layer_widths(config: dict[str, Any]) -> list[int]:
        cfg = BagConfig.model_validate(config)
        return [cfg.dim, cfg.hidden]

    @staticmethod
    def layer_count(config: dict[str, Any]) -> int:
        return 3

    @staticmethod
    def parameter_count(config: dict[str, Any], *, input_shape: list[int], n_classes: int) -> int:
        cfg = BagConfig.model_validate(config)
        return cfg.buckets * cfg.dim + (cfg.dim + 1) * cfg.hidden + (cfg.hidden + 1) * n_classes

    @staticmethod
    def state_shapes(config: dict[str, Any], *, input_shape: list[int], n_classes: int) -> dict[str, list[int]]:
        cfg = BagConfig.model_validate(config)
        return {"embedding.weight": [cfg.buckets, cfg.dim], "hidden.weight": [cfg.hidden, cfg.dim],
                "hidden.bias": [cfg.hidden], "head.weight": [n_classes, cfg.hidden], "head.bias": [n_classes]}


BAG = BagPlugin()
