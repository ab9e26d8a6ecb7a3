"""The head registry and ``build_heads(cfg)``."""
from __future__ import annotations

from torch import nn

from reid.utils.registry import Registry

HEAD_REGISTRY = Registry("head")


def build_heads(cfg) -> nn.Module:
    return HEAD_REGISTRY.get(cfg.MODEL.HEADS.NAME)(cfg)
