"""Backbones: ``BACKBONE_REGISTRY`` (MODEL.BACKBONE.NAME) and ``build_backbone(cfg)``."""
from reid.modeling.backbones.build import BACKBONE_REGISTRY, build_backbone
# Importing a backbone module registers its build_*_backbone function.
from reid.modeling.backbones import (effnet, mobilenetv2, mobilenetv3, osnet, regnet,  # noqa: F401
                                     repvgg, resnest, resnet, resnext, shufflenetv2, vit)

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]
