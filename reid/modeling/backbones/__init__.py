"""Backbones: ``BACKBONE_REGISTRY`` (MODEL.BACKBONE.NAME) and ``build_backbone(cfg)``."""
from reid.modeling.backbones.build import BACKBONE_REGISTRY, build_backbone
from reid.modeling.backbones import resnet  # noqa: F401  (registers build_resnet_backbone)

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]
