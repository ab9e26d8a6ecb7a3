"""MobileNetV2 (Sandler et al. 2018) with FastReID's module and parameter names.

FastReID keeps the flat layout of tonylins/pytorch-mobilenet-v2: ``features.0`` (stem conv, norm),
``features.{i}.conv.{j}`` (each block one Sequential of conv / norm / ReLU6) and ``conv`` (the last
1x1 conv to 1280 channels). torchvision has the same network under nested names
(``features.{i}.conv.{j}.{k}``, last conv at ``features.18``); a state dict in torchvision's
layout is renamed on load, so torchvision's ImageNet file loads as well as a FastReID checkpoint.

DEPTH is the width multiplier in FastReID's spelling ("1.0x", "0.75x", ...). The output stride
is 32 whatever MODEL.BACKBONE.LAST_STRIDE says, as in FastReID.
"""
from __future__ import annotations

import logging
import re

import torch
from torch import nn

from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import (VARIANT_SWITCHES, finish_backbone,
                                            init_conv_norm_weights, parse_depth, reject_switches,
                                            torchvision_urls)
from reid.modeling.layers.norm import get_norm

logger = logging.getLogger(__name__)

WIDTHS = {"1.0x": 1.0, "0.75x": 0.75, "0.5x": 0.5, "0.35x": 0.35, "0.25x": 0.25, "0.1x": 0.1}

# (expansion t, output channels c, repeats n, first stride s) per stage, from the paper
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% below it
    (the TensorFlow reference's rule, shared by FastReID and torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: str,
              groups: int = 1, activation: bool = True) -> list[nn.Module]:
    """conv, norm[, ReLU6] as a flat list, so that blocks keep FastReID's flat indices."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                        groups=groups, bias=False),
              get_norm(norm, out_channels)]
    if activation:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    """[1x1 expand] -> depthwise 3x3 -> 1x1 linear projection; a residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int,
                 norm: str) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.expands = expand_ratio != 1
        self.identity = stride == 1 and in_channels == out_channels
        layers = conv_norm(in_channels, hidden, 1, 1, norm) if self.expands else []
        layers += conv_norm(hidden, hidden, 3, stride, norm, groups=hidden)
        layers += conv_norm(hidden, out_channels, 1, 1, norm, activation=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.identity else out


class MobileNetV2(nn.Module):
    def __init__(self, width_mult: float = 1.0, norm: str = "BN") -> None:
        super().__init__()
        # the reference implementation rounds to multiples of 4 for its narrowest width only
        divisor = 4 if width_mult == 0.1 else 8
        channels = make_divisible(STEM_CHANNELS * width_mult, divisor)
        layers: list[nn.Module] = [nn.Sequential(*conv_norm(3, channels, 3, 2, norm))]
        for expand_ratio, base_channels, repeats, first_stride in STAGES:
            out_channels = make_divisible(base_channels * width_mult, divisor)
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, stride, expand_ratio, norm))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        # widths above 1 widen the last conv too; FastReID's spellings are all <= 1.0x
        last = make_divisible(LAST_CHANNELS * width_mult, divisor) if width_mult > 1.0 \
            else LAST_CHANNELS
        self.conv = nn.Sequential(*conv_norm(channels, last, 1, 1, norm))
        self.out_channels = last
        init_conv_norm_weights(self)
        self.register_load_state_dict_pre_hook(rename_torchvision_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.features(x))


# torchvision's names: a ConvBNReLU unit j of block i holds its conv / norm at .0 / .1
TV_UNIT = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(\d+)\.(.+)")
TV_PLAIN = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(weight|bias|running_mean|running_var|"
                      r"num_batches_tracked)")


def torchvision_key(model: MobileNetV2, key: str) -> str | None:
    """FastReID's name for torchvision's ``key`` (relative to the model); None: not ours."""
    last_index = len(model.features)
    if key.startswith(f"features.{last_index}."):  # torchvision keeps the last conv in features
        return "conv." + key[len(f"features.{last_index}."):]
    if key.startswith("classifier."):
        return None
    unit = TV_UNIT.fullmatch(key)
    if unit:  # unit j's conv/norm -> flat index 3j + k (each unit is conv, norm, ReLU6)
        block, j, k, rest = unit.groups()
        return f"features.{block}.conv.{3 * int(j) + int(k)}.{rest}"
    plain = TV_PLAIN.fullmatch(key)
    if plain:  # projection conv / norm follow the units
        block, j, rest = plain.groups()
        units = 2 if model.features[int(block)].expands else 1
        return f"features.{block}.conv.{3 * units + int(j) - units}.{rest}"
    return key


def is_torchvision_layout(keys) -> bool:
    return any(TV_UNIT.fullmatch(key) for key in keys)


def rename_torchvision_keys(model: MobileNetV2, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: rewrite a torchvision-layout state dict in place."""
    own = {key[len(prefix):]: key for key in state_dict if key.startswith(prefix)}
    if not is_torchvision_layout(own):
        return
    # take every entry out first: a new name can equal an old name still to be renamed
    values = {relative: state_dict.pop(full) for relative, full in own.items()}
    for relative, value in values.items():
        renamed = torchvision_key(model, relative)
        if renamed is not None:
            state_dict[prefix + renamed] = value
    logger.info("renamed torchvision MobileNetV2 keys to FastReID's layout")


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg) -> MobileNetV2:
    options = cfg.MODEL.BACKBONE
    reject_switches(options, VARIANT_SWITCHES, "build_mobilenetv2_backbone")
    depth = parse_depth(options.DEPTH, WIDTHS, "a MobileNetV2 width")
    model = MobileNetV2(WIDTHS[depth], options.NORM)
    # torchvision publishes ImageNet weights for width 1.0 only
    return finish_backbone(model, options, f"mobilenetv2 {depth}", lambda: torchvision_urls(
        "mobilenet_v2" if WIDTHS[depth] == 1.0 else None))
