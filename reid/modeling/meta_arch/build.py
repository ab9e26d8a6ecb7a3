"""The meta-architecture registry and ``build_model(cfg)``."""
from __future__ import annotations

from torch import nn

from reid.utils.registry import Registry

META_ARCH_REGISTRY = Registry("meta-architecture")


def build_model(cfg) -> nn.Module:
    """The model named by MODEL.META_ARCHITECTURE, on the CPU (the caller moves it)."""
    return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
