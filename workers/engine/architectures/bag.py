"""The `bag` kind's network (workers/engine/textbag.py): an embedding bag over hashed token ids, a hidden ReLU layer
and a linear head."""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingBagClassifier(nn.Module):
    def __init__(self, *, buckets: int, dim: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.embedding = nn.Embedding(buckets, dim)
        self.hidden = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, n_classes)
        nn.init.normal_(self.embedding.weight, std=dim ** -0.5)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Tensor operations only (no data-dependent Python): torch.func maps this over single examples.
        vectors = self.embedding(ids.remainder(self.buckets))
        bag = (vectors * mask.unsqueeze(-1)).sum(-2) / mask.sum(-1, keepdim=True).clamp_min(1.0)
        return self.head(torch.relu(self.hidden(bag)))
