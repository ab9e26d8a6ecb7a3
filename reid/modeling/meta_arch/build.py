"""The meta-architecture registry and ``build_model(cfg)``."""
from __future__ import annotations

from torch import nn

from reid.modeling.heads.embedding_head import EmbeddingHead
from reid.utils.registry import Registry

META_ARCH_REGISTRY = Registry("meta-architecture")


def build_model(cfg) -> nn.Module:
    """The model named by MODEL.META_ARCHITECTURE, on the CPU (the caller moves it)."""
    return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)


def classifier_weight_names(model: nn.Module) -> list[str]:
    """Parameter names of every head's classifier weight (``heads.weight``; MGN has eight)."""
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, EmbeddingHead)]
