"""Split-attention convolution, the building block of ResNeSt (Zhang et al., 2020).

A grouped convolution produces ``radix`` feature-map splits per cardinal group; a small
squeeze-excitation style branch turns the sum of the splits into per-channel logits, and a
softmax across the splits ("radix softmax") weighs them into one output. Sub-module names are
FastReID's (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``) so its checkpoints and the ResNeSt
release files load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.modeling.layers.norm import get_norm

# ResNeSt's attention bottleneck: radix * channels / 4, but never narrower than 32
REDUCTION_FACTOR = 4
MIN_ATTENTION_CHANNELS = 32


def radix_softmax(logits: torch.Tensor, radix: int, groups: int) -> torch.Tensor:
    """Per-channel weights ``B x radix*C`` from the ``B x radix*C x 1 x 1`` attention logits.

    ``fc2`` is grouped by cardinality, so its output is laid out (group, split, channel); the
    splits of the convolution are laid out (split, group, channel). The softmax runs across the
    splits and the result is reordered to the convolution's layout. With one split there is
    nothing to choose between, and the weight is a sigmoid gate instead.
    """
    batch = logits.size(0)
    if radix == 1:
        return torch.sigmoid(logits).reshape(batch, -1)
    per_group = logits.reshape(batch, groups, radix, -1)
    return F.softmax(per_group, dim=2).transpose(1, 2).reshape(batch, -1)


class SplitAttentionConv2d(nn.Module):
    """``in_channels -> channels`` convolution with split attention over ``radix`` splits."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True,
                 radix: int = 2, norm: str | None = "BN") -> None:
        super().__init__()
        self.radix = radix
        self.groups = groups
        attention_channels = max(in_channels * radix // REDUCTION_FACTOR, MIN_ATTENTION_CHANNELS)
        self.conv = nn.Conv2d(in_channels, channels * radix, kernel_size, stride, padding,
                              dilation, groups=groups * radix, bias=bias)
        self.bn0 = get_norm(norm, channels * radix) if norm else None
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, attention_channels, 1, groups=groups)
        self.bn1 = get_norm(norm, attention_channels) if norm else None
        self.fc2 = nn.Conv2d(attention_channels, channels * radix, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn0 is not None:
            x = self.bn0(x)
        x = self.relu(x)
        splits = torch.chunk(x, self.radix, dim=1)
        pooled = F.adaptive_avg_pool2d(sum(splits), 1)
        hidden = self.fc1(pooled)
        if self.bn1 is not None:
            hidden = self.bn1(hidden)
        weights = radix_softmax(self.fc2(self.relu(hidden)), self.radix, self.groups)
        weights = weights.reshape(x.size(0), -1, 1, 1)
        split_weights = torch.chunk(weights, self.radix, dim=1)
        return sum(w * s for w, s in zip(split_weights, splits))
