"""The model layer: backbones, heads, losses and meta-architectures, built from the config.

``build_model(cfg)`` returns ``META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)`` on the
CPU. Parameter names follow FastReID (``backbone.*``, ``heads.*``).
"""
from reid.modeling.backbones import BACKBONE_REGISTRY, build_backbone
from reid.modeling.heads import HEAD_REGISTRY, build_heads
from reid.modeling.layers import (CLS_LAYER_REGISTRY, NORM_REGISTRY, POOLING_REGISTRY,
                                  wants_sync_bn)
from reid.modeling.losses import KD_LOSS_REGISTRY, LOSS_REGISTRY, build_losses
from reid.modeling.meta_arch import (META_ARCH_REGISTRY, Baseline, Distiller, build_model,
                                     classifier_weight_names)

__all__ = ["BACKBONE_REGISTRY", "HEAD_REGISTRY", "LOSS_REGISTRY", "META_ARCH_REGISTRY",
           "CLS_LAYER_REGISTRY", "POOLING_REGISTRY", "NORM_REGISTRY", "KD_LOSS_REGISTRY",
           "Baseline", "Distiller", "build_backbone", "build_heads", "build_losses",
           "build_model", "classifier_weight_names", "wants_sync_bn"]
