"""A CIFAR-style ResNet (He et al. 2016 as adapted for 32x32 inputs): 3x3 stem without max-pool, stages of basic
blocks with BatchNorm, global average pooling. width=64, blocks=[2, 2, 2, 2] is ResNet-18. Written here because
torchvision does not import beside the pinned torch."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from workers.engine.architectures import image_shape


class BasicBlock(nn.Module):
    def __init__(self, cin: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, width: int = 64,
                 blocks: list[int] | tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()

        if n_classes < 2:
            raise ValueError("need at least two classes")
        self.image_shape = image_shape(input_shape)
        self.conv1 = nn.Conv2d(self.image_shape[0], width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages: list[nn.Module] = []
        cin = width
        for stage, n in enumerate(blocks):
            out = width * 2 ** stage
            layers = []
            for i in range(n):
                layers.append(BasicBlock(cin, out, 2 if stage > 0 and i == 0 else 1))
                cin = out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.image_shape)
        x = self.stages(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
