"""RegNetX / RegNetY backbones with FastReID's (pycls') DEPTH names and parameter names.

Layout: ``stem.{conv,bn}``, stages ``s1..s4`` of blocks ``b1..bN``; a block holds the transform
``f.{a,a_bn,b,b_bn,[se.f_ex.0, se.f_ex.2],c,c_bn}`` and, when its shape changes, the shortcut
``proj, bn``. These are pycls' names, so pycls ImageNet files and FastReID checkpoints load by name.
The backbone returns the last feature map (stride 16 with LAST_STRIDE 1, 32 with 2).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import (VARIANT_SWITCHES, finish_backbone,
                                            init_conv_norm_weights, parse_depth, pycls_he_normal,
                                            reject_switches, stripped)
from reid.modeling.layers.norm import get_norm
from reid.modeling.layers.se import ConvSELayer

logger = logging.getLogger(__name__)

STEM_WIDTH = 32
SE_RATIO = 0.25          # RegNetY: squeeze width = round(block input width * 0.25)
WIDTH_QUANTUM = 8        # per-block widths are multiples of 8 before group adjustment


@dataclass(frozen=True)
class RegNetSpec:
    """The RegNet design-space parameters of one model (the pycls yaml ``REGNET`` section)."""

    depth: int           # number of blocks
    w0: int              # initial width
    wa: float            # width slope
    wm: float            # width multiplier between stages (quantisation)
    group_width: int
    se: bool             # squeeze-and-excitation (the Y models)
    url: str             # pycls ImageNet weights, as FastReID downloads them


PYCLS = "https://dl.fbaipublicfiles.com/pycls/dds_baselines"

# FastReID's DEPTH names: MFLOPs + "x" / "y"
SPECS = {
    "800x": RegNetSpec(16, 56, 35.73, 2.28, 16, False,
                       f"{PYCLS}/160906036/RegNetX-800MF_dds_8gpu.pyth"),
    "800y": RegNetSpec(14, 56, 38.84, 2.40, 16, True,
                       f"{PYCLS}/160906567/RegNetY-800MF_dds_8gpu.pyth"),
    "1600x": RegNetSpec(18, 80, 34.01, 2.25, 24, False,
                        f"{PYCLS}/160990626/RegNetX-1.6GF_dds_8gpu.pyth"),
    "1600y": RegNetSpec(27, 48, 20.71, 2.65, 24, True,
                        f"{PYCLS}/160906681/RegNetY-1.6GF_dds_8gpu.pyth"),
    "3200x": RegNetSpec(25, 88, 26.31, 2.25, 48, False,
                        f"{PYCLS}/160906139/RegNetX-3.2GF_dds_8gpu.pyth"),
    "3200y": RegNetSpec(21, 80, 42.63, 2.66, 24, True,
                        f"{PYCLS}/160906834/RegNetY-3.2GF_dds_8gpu.pyth"),
    "4000x": RegNetSpec(23, 96, 38.65, 2.43, 40, False,
                        f"{PYCLS}/160906383/RegNetX-4.0GF_dds_8gpu.pyth"),
    "4000y": RegNetSpec(22, 96, 31.41, 2.24, 64, True,
                        f"{PYCLS}/160906838/RegNetY-4.0GF_dds_8gpu.pyth"),
    "6400x": RegNetSpec(17, 184, 60.83, 2.07, 56, False,
                        f"{PYCLS}/161116590/RegNetX-6.4GF_dds_8gpu.pyth"),
    "6400y": RegNetSpec(25, 112, 33.22, 2.27, 72, True,
                        f"{PYCLS}/160907112/RegNetY-6.4GF_dds_8gpu.pyth"),
}


@dataclass(frozen=True)
class Stage:
    depth: int
    width: int
    group_width: int


def block_widths(spec: RegNetSpec) -> list[int]:
    """Per-block widths: a linear ramp snapped to powers of ``wm`` times ``w0``, multiples of 8."""
    widths = []
    for index in range(spec.depth):
        linear = spec.w0 + spec.wa * index
        power = round(math.log(linear / spec.w0) / math.log(spec.wm))
        widths.append(int(round(spec.w0 * spec.wm ** power / WIDTH_QUANTUM) * WIDTH_QUANTUM))
    return widths


def regnet_stages(spec: RegNetSpec) -> list[Stage]:
    """Group equal consecutive block widths into stages; make widths divisible by the groups."""
    runs: list[list[int]] = []  # [width, count]
    for width in block_widths(spec):
        if runs and runs[-1][0] == width:
            runs[-1][1] += 1
        else:
            runs.append([width, 1])
    stages = []
    for width, count in runs:
        # a group can be no wider than the block; the width then rounds to whole groups
        group_width = min(spec.group_width, width)
        stages.append(Stage(count, int(round(width / group_width) * group_width), group_width))
    return stages


class BottleneckTransform(nn.Module):
    """1x1 -> grouped 3x3 (strided) -> [SE] -> 1x1, bottleneck multiplier 1 as in RegNet."""

    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int, se: bool,
                 norm: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(w_in, w_out, 1, bias=False)
        self.a_bn = get_norm(norm, w_out)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(w_out, w_out, 3, stride, 1, groups=w_out // group_width, bias=False)
        self.b_bn = get_norm(norm, w_out)
        self.b_relu = nn.ReLU(inplace=True)
        # the squeeze width follows the block's input width, not the bottleneck's
        self.se = (ConvSELayer(w_out, int(round(w_in * SE_RATIO)), partial(nn.ReLU, inplace=True))
                   if se else None)
        self.c = nn.Conv2d(w_out, w_out, 1, bias=False)
        self.c_bn = get_norm(norm, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(x))


class ResBottleneckBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int, se: bool,
                 norm: str) -> None:
        super().__init__()
        self.proj_block = w_in != w_out or stride != 1
        if self.proj_block:
            self.proj = nn.Conv2d(w_in, w_out, 1, stride, bias=False)
            self.bn = get_norm(norm, w_out)
        self.f = BottleneckTransform(w_in, w_out, stride, group_width, se, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn(self.proj(x)) if self.proj_block else x
        return self.relu(shortcut + self.f(x))


class SimpleStem(nn.Module):
    """3x3 stride-2 conv, BN, ReLU."""

    def __init__(self, w_out: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, w_out, 3, 2, 1, bias=False)
        self.bn = get_norm(norm, w_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class RegNet(nn.Sequential):
    """Stem and stages s1..s4, run in that order."""

    def __init__(self, spec: RegNetSpec, last_stride: int = 1, norm: str = "BN") -> None:
        super().__init__()
        self.stem = SimpleStem(STEM_WIDTH, norm)
        stages = regnet_stages(spec)
        w_in = STEM_WIDTH
        for index, stage in enumerate(stages, start=1):
            stride = last_stride if index == len(stages) else 2
            self.add_module(f"s{index}", self._make_stage(w_in, stage, stride, spec.se, norm))
            w_in = stage.width
        self.out_channels = w_in
        init_conv_norm_weights(self, pycls_he_normal)

    @staticmethod
    def _make_stage(w_in: int, stage: Stage, stride: int, se: bool, norm: str) -> nn.Sequential:
        blocks = nn.Sequential()
        for index in range(stage.depth):
            first = index == 0
            blocks.add_module(f"b{index + 1}", ResBottleneckBlock(
                w_in if first else stage.width, stage.width, stride if first else 1,
                stage.group_width, se, norm))
        return blocks


@BACKBONE_REGISTRY.register()
def build_regnet_backbone(cfg) -> RegNet:
    options = cfg.MODEL.BACKBONE
    # SE is part of the DEPTH name (the "y" models), so WITH_SE is refused too
    reject_switches(options, VARIANT_SWITCHES, "RegNet", "SE comes with the 'y' depths")
    depth = parse_depth(options.DEPTH, SPECS, "a RegNet depth", stripped)
    model = RegNet(SPECS[depth], options.LAST_STRIDE, options.NORM)
    return finish_backbone(model, options, f"regnet {depth}", lambda: [SPECS[depth].url])
