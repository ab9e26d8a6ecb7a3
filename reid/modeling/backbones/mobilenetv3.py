"""MobileNetV3 Large / Small (Howard et al. 2019) with FastReID's module and parameter names.

``features`` is torchvision's layout key for key (stem ``features.0.{0,1}``, blocks
``features.{i}.block.{j}.{0,1}`` with squeeze-excitation ``block.{j}.fc1/fc2``, the 6x-wide 1x1
conv last), so torchvision's ImageNet files load by name; FastReID then replaces torchvision's
classifier with ``conv`` (1x1 conv + norm + ReLU6 to 1280 / 1024 channels), which stays at
random init when loading ImageNet weights, as in FastReID.

DEPTH is "Large" or "Small". The output stride is 32 whatever MODEL.BACKBONE.LAST_STRIDE says,
as in FastReID.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import (VARIANT_SWITCHES, finish_backbone,
                                            init_conv_norm_weights, parse_depth, reject_switches,
                                            torchvision_urls)
from reid.modeling.backbones.mobilenetv2 import make_divisible
from reid.modeling.layers.norm import get_norm

logger = logging.getLogger(__name__)


class BlockSpec(NamedTuple):
    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    hard_swish: bool  # False: ReLU
    stride: int


def specs(*rows) -> tuple[BlockSpec, ...]:
    return tuple(BlockSpec(*row) for row in rows)


# Table 1 / 2 of the paper (and torchvision): in, kernel, expanded, out, SE, hard-swish, stride
LARGE = specs(
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1), (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1))
SMALL = specs(
    (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1))


class Arch(NamedTuple):
    blocks: tuple[BlockSpec, ...]
    last_channels: int
    torchvision_name: str


ARCHS = {
    "Large": Arch(LARGE, 1280, "mobilenet_v3_large"),
    "Small": Arch(SMALL, 1024, "mobilenet_v3_small"),
}


class ConvNormActivation(nn.Sequential):
    """conv (0), norm (1), activation (2): torchvision's child indices."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str,
                 activation: type[nn.Module], stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            get_norm(norm, out_channels),
            activation(inplace=True) if activation is not nn.Identity else nn.Identity())


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze_factor: int = 4) -> None:
        super().__init__()
        squeezed = make_divisible(channels // squeeze_factor, 8)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """[1x1 expand] -> depthwise kxk -> [SE] -> 1x1 linear projection; residual if shapes allow."""

    def __init__(self, spec: BlockSpec, norm: str) -> None:
        super().__init__()
        activation = nn.Hardswish if spec.hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if spec.expanded != spec.in_channels:
            layers.append(ConvNormActivation(spec.in_channels, spec.expanded, 1, norm, activation))
        layers.append(ConvNormActivation(spec.expanded, spec.expanded, spec.kernel, norm,
                                         activation, stride=spec.stride, groups=spec.expanded))
        if spec.use_se:
            layers.append(SqueezeExcitation(spec.expanded))
        layers.append(ConvNormActivation(spec.expanded, spec.out_channels, 1, norm, nn.Identity))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = spec.stride == 1 and spec.in_channels == spec.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    def __init__(self, arch: Arch, norm: str = "BN") -> None:
        super().__init__()
        first, last = arch.blocks[0], arch.blocks[-1]
        layers: list[nn.Module] = [
            ConvNormActivation(3, first.in_channels, 3, norm, nn.Hardswish, stride=2)]
        layers += [InvertedResidual(spec, norm) for spec in arch.blocks]
        wide = 6 * last.out_channels
        layers.append(ConvNormActivation(last.out_channels, wide, 1, norm, nn.Hardswish))
        self.features = nn.Sequential(*layers)
        # FastReID's stand-in for torchvision's classifier Linear: a 1x1 conv keeps the map
        self.conv = nn.Sequential(nn.Conv2d(wide, arch.last_channels, 1, bias=False),
                                  get_norm(norm, arch.last_channels),
                                  nn.ReLU6(inplace=True))
        self.out_channels = arch.last_channels
        init_conv_norm_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.features(x))


@BACKBONE_REGISTRY.register()
def build_mobilenetv3_backbone(cfg) -> MobileNetV3:
    options = cfg.MODEL.BACKBONE
    reject_switches(options, VARIANT_SWITCHES, "build_mobilenetv3_backbone")
    depth = parse_depth(options.DEPTH, ARCHS, "a MobileNetV3 size")
    arch = ARCHS[depth]
    model = MobileNetV3(arch, options.NORM)
    return finish_backbone(model, options, f"mobilenetv3 {depth}",
                           lambda: torchvision_urls(arch.torchvision_name))
