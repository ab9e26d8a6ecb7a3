"""The backbone registry and ``build_backbone(cfg)``."""
from __future__ import annotations

from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.timm_backbone import TIMM_PREFIX, build_timm_backbone
from reid.utils.registry import Registry

BACKBONE_REGISTRY = Registry("backbone")


def build_backbone(cfg) -> nn.Module:
    """Build MODEL.BACKBONE.NAME and check that it outputs MODEL.BACKBONE.FEAT_DIM channels."""
    name = cfg.MODEL.BACKBONE.NAME
    # "timm:<model>" wraps any timm model; every other name is a registered builder.
    builder = build_timm_backbone if name.startswith(TIMM_PREFIX) else _registered(name)
    backbone = builder(cfg)
    check_feat_dim(cfg, backbone)
    return backbone


def _registered(name: str):
    try:
        return BACKBONE_REGISTRY.get(name)
    except ReidError as exc:
        raise ReidError(f"{exc}; or any timm model as '{TIMM_PREFIX}<model name>'") from None


def check_feat_dim(cfg, backbone: nn.Module) -> None:
    # the head sizes its BNNeck and classifier from FEAT_DIM, so a mismatch would only
    # surface later as an obscure shape error inside the first forward pass
    expected, actual = cfg.MODEL.BACKBONE.FEAT_DIM, backbone.out_channels
    if expected != actual:
        what = getattr(backbone, "description", cfg.MODEL.BACKBONE.NAME)
        raise ReidError(f"MODEL.BACKBONE.FEAT_DIM is {expected} but {what} outputs {actual} "
                        f"channels; set MODEL.BACKBONE.FEAT_DIM {actual}")
