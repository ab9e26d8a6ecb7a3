"""EfficientNet B0-B5 backbones with FastReID's (pycls') DEPTH names and parameter names.

Layout: ``stem.{conv,bn}``, stages ``s1..s7`` of MBConv blocks ``b1..bN`` holding
``[exp, exp_bn,] dwise, dwise_bn, se.f_ex.{0,2}, lin_proj, lin_proj_bn``, then
``head.{conv,conv_bn}`` (the 1x1 conv to the head width; pooling and the classifier belong to
the re-id head). pycls ImageNet files and FastReID checkpoints load by name. Stage 6 takes
LAST_STRIDE, as in FastReID: stride 16 with LAST_STRIDE 1, 32 with 2.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import (VARIANT_SWITCHES, finish_backbone,
                                            init_conv_norm_weights, parse_depth, pycls_he_normal,
                                            reject_switches, stripped)
from reid.modeling.layers.norm import get_norm
from reid.modeling.layers.se import ConvSELayer

logger = logging.getLogger(__name__)

# shared by every EfficientNet: per-stage expansion ratio, stride and depthwise kernel
EXPANSION_RATIOS = (1, 6, 6, 6, 6, 6, 6)
STRIDES = (1, 2, 2, 2, 1, 2, 1)
KERNELS = (3, 3, 5, 3, 5, 5, 3)
SE_RATIO = 0.25          # squeeze width = block input width * 0.25
LAST_STRIDE_STAGE = 5    # index of the stage whose stride MODEL.BACKBONE.LAST_STRIDE sets


@dataclass(frozen=True)
class EffNetSpec:
    stem_width: int
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    head_width: int
    url: str


PYCLS = "https://dl.fbaipublicfiles.com/pycls/dds_baselines"

# FastReID's DEPTH names; numbers from the pycls EN-B* configs FastReID ships
SPECS = {
    "b0": EffNetSpec(32, (1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320), 1280,
                     f"{PYCLS}/161305613/EN-B0_dds_8gpu.pyth"),
    "b1": EffNetSpec(32, (2, 3, 3, 4, 4, 5, 2), (16, 24, 40, 80, 112, 192, 320), 1280,
                     f"{PYCLS}/161304979/EN-B1_dds_8gpu.pyth"),
    "b2": EffNetSpec(32, (2, 3, 3, 4, 4, 5, 2), (16, 24, 48, 88, 120, 208, 352), 1408,
                     f"{PYCLS}/161305015/EN-B2_dds_8gpu.pyth"),
    "b3": EffNetSpec(40, (2, 3, 3, 5, 5, 6, 2), (24, 32, 48, 96, 136, 232, 384), 1536,
                     f"{PYCLS}/161305060/EN-B3_dds_8gpu.pyth"),
    "b4": EffNetSpec(48, (2, 4, 4, 6, 6, 8, 2), (24, 32, 56, 112, 160, 272, 448), 1792,
                     f"{PYCLS}/161305098/EN-B4_dds_8gpu.pyth"),
    "b5": EffNetSpec(48, (3, 5, 5, 7, 7, 9, 3), (24, 40, 64, 128, 176, 304, 512), 2048,
                     f"{PYCLS}/161305138/EN-B5_dds_8gpu.pyth"),
}


class MBConv(nn.Module):
    """Inverted bottleneck: [1x1 expand] -> depthwise kxk -> SE -> 1x1 project [+ x]."""

    def __init__(self, w_in: int, w_out: int, expansion: int, kernel: int, stride: int,
                 norm: str) -> None:
        super().__init__()
        w_exp = int(w_in * expansion)
        self.exp = None
        if w_exp != w_in:
            self.exp = nn.Conv2d(w_in, w_exp, 1, bias=False)
            self.exp_bn = get_norm(norm, w_exp)
            self.exp_swish = nn.SiLU()
        self.dwise = nn.Conv2d(w_exp, w_exp, kernel, stride, (kernel - 1) // 2, groups=w_exp,
                               bias=False)
        self.dwise_bn = get_norm(norm, w_exp)
        self.dwise_swish = nn.SiLU()
        self.se = ConvSELayer(w_exp, int(w_in * SE_RATIO), nn.SiLU)  # Swish
        self.lin_proj = nn.Conv2d(w_exp, w_out, 1, bias=False)
        self.lin_proj_bn = get_norm(norm, w_out)
        # the projection is linear, so the residual is a plain sum (MobileNetV2 style)
        self.has_skip = stride == 1 and w_in == w_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.exp is not None:
            out = self.exp_swish(self.exp_bn(self.exp(out)))
        out = self.dwise_swish(self.dwise_bn(self.dwise(out)))
        out = self.lin_proj_bn(self.lin_proj(self.se(out)))
        return x + out if self.has_skip else out


class Stem(nn.Module):
    """3x3 stride-2 conv, BN, Swish."""

    def __init__(self, w_out: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, w_out, 3, 2, 1, bias=False)
        self.bn = get_norm(norm, w_out)
        self.swish = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swish(self.bn(self.conv(x)))


class Head(nn.Module):
    """1x1 conv to the head width, BN, Swish (pycls' pooling and classifier are left out)."""

    def __init__(self, w_in: int, w_out: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(w_in, w_out, 1, bias=False)
        self.conv_bn = get_norm(norm, w_out)
        self.conv_swish = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_swish(self.conv_bn(self.conv(x)))


class EffNet(nn.Sequential):
    """Stem, stages s1..s7 and head, run in that order."""

    def __init__(self, spec: EffNetSpec, last_stride: int = 1, norm: str = "BN") -> None:
        super().__init__()
        self.stem = Stem(spec.stem_width, norm)
        w_in = spec.stem_width
        stage_params = zip(spec.depths, spec.widths, EXPANSION_RATIOS, STRIDES, KERNELS)
        for index, (depth, width, expansion, stride, kernel) in enumerate(stage_params):
            if index == LAST_STRIDE_STAGE:
                stride = last_stride
            stage = nn.Sequential()
            for block in range(depth):
                stage.add_module(f"b{block + 1}", MBConv(
                    w_in, width, expansion, kernel, stride if block == 0 else 1, norm))
                w_in = width
            self.add_module(f"s{index + 1}", stage)
        self.head = Head(w_in, spec.head_width, norm)
        self.out_channels = spec.head_width
        init_conv_norm_weights(self, pycls_he_normal)


@BACKBONE_REGISTRY.register()
def build_effnet_backbone(cfg) -> EffNet:
    options = cfg.MODEL.BACKBONE
    reject_switches(options, VARIANT_SWITCHES, "EfficientNet", "its blocks always have SE")
    depth = parse_depth(options.DEPTH, SPECS, "an EfficientNet depth", stripped)
    model = EffNet(SPECS[depth], options.LAST_STRIDE, options.NORM)
    return finish_backbone(model, options, f"efficientnet {depth}", lambda: [SPECS[depth].url])
