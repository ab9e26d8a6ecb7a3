"""Normalisation layers named by MODEL.BACKBONE.NORM / MODEL.HEADS.NORM.

"syncBN" builds a plain BatchNorm2d: synchronised batch norm only exists across processes, so
the engine converts the model with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` when it
runs under DDP and ``wants_sync_bn(cfg)`` is true. A single-process (CPU) run keeps plain BN.
"""
from __future__ import annotations

from torch import nn

from reid.utils.registry import Registry

NORM_REGISTRY = Registry("normalisation layer")
NORM_REGISTRY.register(nn.BatchNorm2d, name="BN")
NORM_REGISTRY.register(nn.BatchNorm2d, name="syncBN", aliases=("SyncBN",))

SYNC_BN_NAMES = ("syncBN", "SyncBN")


def get_norm(name: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer over ``channels`` channels."""
    return NORM_REGISTRY.get(name)(channels)


def wants_sync_bn(cfg) -> bool:
    """Whether the config asks for synchronised BN (the engine converts under DDP)."""
    return cfg.MODEL.BACKBONE.NORM in SYNC_BN_NAMES or cfg.MODEL.HEADS.NORM in SYNC_BN_NAMES
