"""Squeeze-and-excitation: reweight channels by a gate computed from their global average.

Two layouts, each under the names of the weight files that use it:
- ``SELayer``: SENet / IBN-Net / FastReID's ResNet (``fc.0`` and ``fc.2`` bias-free linear layers,
  reduction 16), so ``se.fc.0.weight`` / ``se.fc.2.weight`` load by name;
- ``ConvSELayer``: pycls' (RegNetY, EfficientNet), 1x1 convs with bias ``f_ex.0`` / ``f_ex.2``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class SELayer(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = int(channels / reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        gate = self.fc(self.avg_pool(x).view(batch, channels))
        return x * gate.view(batch, channels, 1, 1)


class ConvSELayer(nn.Module):
    """Average pool, 1x1 conv to ``squeezed`` channels, ``activation()``, 1x1 conv, sigmoid gate."""

    def __init__(self, channels: int, squeezed: int, activation: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.f_ex = nn.Sequential(nn.Conv2d(channels, squeezed, 1), activation(),
                                  nn.Conv2d(squeezed, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(self.avg_pool(x))
