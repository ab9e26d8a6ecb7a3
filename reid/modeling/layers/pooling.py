"""Global pooling layers for the head (MODEL.HEADS.POOL_LAYER).

Every layer maps ``B x C x H x W`` to ``B x C x 1 x 1`` so the BNNeck can stay a BatchNorm2d,
as in FastReID. Names are FastReID 1.0's; FastReID 1.4's class names are aliases.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.utils.registry import Registry

POOLING_REGISTRY = Registry("pooling layer")


@POOLING_REGISTRY.register(name="avgpool",
                           aliases=("GlobalAvgPool", "fastavgpool", "FastGlobalAvgPool"))
class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    def __init__(self) -> None:
        super().__init__(1)


@POOLING_REGISTRY.register(name="maxpool", aliases=("GlobalMaxPool",))
class GlobalMaxPool(nn.AdaptiveMaxPool2d):
    def __init__(self) -> None:
        super().__init__(1)


@POOLING_REGISTRY.register(name="avgmaxpool", aliases=("AdaptiveAvgMaxPool",))
class AvgMaxPool(nn.Module):
    """Sum of global average and global max pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)


@POOLING_REGISTRY.register(name="gempool", aliases=("GeneralizedMeanPooling",))
class GeneralizedMeanPooling(nn.Module):
    """GeM pooling: (mean x^p)^(1/p) with a fixed p (p=3 as in FastReID)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clamp: a fractional power of a negative activation is undefined
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


@POOLING_REGISTRY.register(name="gempoolP", aliases=("GeneralizedMeanPoolingP",))
class GeneralizedMeanPoolingP(GeneralizedMeanPooling):
    """GeM pooling with a learnt p (state-dict key ``p``)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__(p, eps)
        self.p = nn.Parameter(torch.ones(1) * p)


@POOLING_REGISTRY.register(name="clipavgpool",
                           aliases=("ClipGlobalAvgPool", "ClipGlobalAvgPool2d"))
class ClipGlobalAvgPool(nn.Module):
    """Global average pooling clamped to [0, 1] (FastReID's ClipGlobalAvgPool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).clamp(min=0.0, max=1.0)


@POOLING_REGISTRY.register(name="flatten", aliases=("Flatten",))
class FlattenPool(nn.Module):
    """No pooling: the whole feature map becomes the channel vector (B x CHW x 1 x 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, 1, 1)


@POOLING_REGISTRY.register(name="identity", aliases=("Identity",))
class IdentityPool(nn.Identity):
    """For backbones that already output B x C x 1 x 1."""


def build_pooling(name: str) -> nn.Module:
    return POOLING_REGISTRY.get(name)()
