"""Squeeze-and-excitation: reweight channels by a gate computed from their global average.

Layout as in SENet / IBN-Net / FastReID (``fc.0`` and ``fc.2`` bias-free linear layers, reduction
16), so ``se.fc.0.weight`` / ``se.fc.2.weight`` of their weight files load by name.
"""
from __future__ import annotations

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
