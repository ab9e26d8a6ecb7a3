"""ResNeXt backbones (50x, 101x) laid out as FastReID's ``build_resnext_backbone``.

FastReID's ResNeXt is the 32x4d one (32 groups, 4 channels per group per 64 planes; IBN-Net's
``resnext101_ibn_a``), with ResNet's names (``layer3.5.conv2`` is the grouped 3x3 conv), so
torchvision's ``resnext50_32x4d`` ImageNet file loads by name too. It differs from FastReID's
ResNet in three ways this module keeps: WITH_IBN puts IBN-a in all four stages (layer4
included), the stem max-pool pads by one (torchvision's), and WITH_NL places 2 + 3 non-local
blocks in layer2 / layer3 for both depths. FastReID's ResNeXt has no SE blocks.
"""
from __future__ import annotations

import logging

from torch import nn

from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import finish_backbone, parse_depth, with_x_suffix
from reid.modeling.backbones.resnet import (
    Arch, Bottleneck, ResNet, check_last_stride, describe, imagenet_urls, nonlocal_layout)

logger = logging.getLogger(__name__)


class ResNeXtBottleneck(Bottleneck):
    """ResNeXt block (type C): the 3x3 conv split into ``groups`` groups of ``base_width``
    channels per 64 planes."""

    groups = 32
    base_width = 4

    @classmethod
    def inner_width(cls, channels: int) -> int:
        return channels * cls.base_width // 64 * cls.groups


RESNEXT_ARCHS = {
    "50x": Arch(ResNeXtBottleneck, (3, 4, 6, 3), "resnext50_32x4d", (0, 2, 3, 0)),
    # torchvision has no 101-layer 32x4d file (only 32x8d / 64x4d, other shapes)
    "101x": Arch(ResNeXtBottleneck, (3, 4, 23, 3), None, (0, 2, 3, 0)),
}
RESNEXT_IBN_LAYERS = (1, 2, 3, 4)
IBN_NET_FILES = {"101x": "resnext101_ibn_a-6ace051d.pth"}


@BACKBONE_REGISTRY.register()
def build_resnext_backbone(cfg) -> ResNet:
    options = cfg.MODEL.BACKBONE
    depth = parse_depth(options.DEPTH, RESNEXT_ARCHS, "a ResNeXt depth", with_x_suffix)
    check_last_stride(options.LAST_STRIDE)
    arch = RESNEXT_ARCHS[depth]
    description = describe("resnext", depth, options.WITH_IBN, False, options.WITH_NL)
    if options.WITH_SE:
        # FastReID's builder ignores the key for ResNeXt; its configs must still load
        logger.warning("MODEL.BACKBONE.WITH_SE is ignored by build_resnext_backbone "
                       "(FastReID's ResNeXt has no SE blocks)")
    model = ResNet(arch.block, arch.layers, options.LAST_STRIDE, options.NORM,
                   ibn_layers=RESNEXT_IBN_LAYERS if options.WITH_IBN else (),
                   nl_layers=nonlocal_layout(arch, description, options.WITH_NL),
                   maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    # IBN-Net has a file for 101x only, torchvision for 50x only
    return finish_backbone(model, options, description, lambda: imagenet_urls(
        options.WITH_IBN, IBN_NET_FILES.get(depth), arch.torchvision_name))
