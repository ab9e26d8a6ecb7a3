"""RepVGG backbones (A0-A2, B0-B3 and their grouped variants) with FastReID's names.

Training-time blocks have three branches summed before the ReLU: ``rbr_dense`` (3x3 conv + BN),
``rbr_1x1`` (1x1 conv + BN) and, when the shape is kept, ``rbr_identity`` (BN). Every branch is
linear in eval mode, so ``RepVGG.deploy()`` folds each block into one 3x3 conv whose parameters
are ``fused_weight`` / ``fused_bias`` (FastReID's names, so deployed checkpoints load too).
Layout: ``stage0`` (one block), ``stage1..stage4`` (sequences of blocks); stage4 takes LAST_STRIDE.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import (VARIANT_SWITCHES, finish_backbone, parse_depth,
                                            reject_switches, stripped)
from reid.modeling.layers.norm import get_norm

logger = logging.getLogger(__name__)

BASE_WIDTHS = (64, 128, 256, 512)
A_DEPTHS = (2, 4, 14, 1)
B_DEPTHS = (4, 6, 16, 1)
# RepVGG's grouped variants group every other 3x3 conv, counting blocks from stage1's first
GROUPED_LAYERS = tuple(range(2, 27, 2))


@dataclass(frozen=True)
class RepVGGSpec:
    depths: tuple[int, int, int, int]
    width_multipliers: tuple[float, float, float, float]
    groups: int = 1

    def stage_widths(self) -> list[int]:
        return [int(base * m) for base, m in zip(BASE_WIDTHS, self.width_multipliers)]

    def groups_of(self, layer: int) -> int:
        return self.groups if layer in GROUPED_LAYERS else 1


SPECS = {
    "A0": RepVGGSpec(A_DEPTHS, (0.75, 0.75, 0.75, 2.5)),
    "A1": RepVGGSpec(A_DEPTHS, (1, 1, 1, 2.5)),
    "A2": RepVGGSpec(A_DEPTHS, (1.5, 1.5, 1.5, 2.75)),
    "B0": RepVGGSpec(B_DEPTHS, (1, 1, 1, 2.5)),
    "B1": RepVGGSpec(B_DEPTHS, (2, 2, 2, 4)),
    "B1g2": RepVGGSpec(B_DEPTHS, (2, 2, 2, 4), 2),
    "B1g4": RepVGGSpec(B_DEPTHS, (2, 2, 2, 4), 4),
    "B2": RepVGGSpec(B_DEPTHS, (2.5, 2.5, 2.5, 5)),
    "B2g2": RepVGGSpec(B_DEPTHS, (2.5, 2.5, 2.5, 5), 2),
    "B2g4": RepVGGSpec(B_DEPTHS, (2.5, 2.5, 2.5, 5), 4),
    "B3": RepVGGSpec(B_DEPTHS, (3, 3, 3, 5)),
    "B3g2": RepVGGSpec(B_DEPTHS, (3, 3, 3, 5), 2),
    "B3g4": RepVGGSpec(B_DEPTHS, (3, 3, 3, 5), 4),
}


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int,
            norm: str) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module("conv", nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2,
                                        groups=groups, bias=False))
    branch.add_module("bn", get_norm(norm, c_out))
    return branch


def fold_bn(kernel: torch.Tensor, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel and bias of ``bn(conv(x, kernel))`` with BN's running statistics."""
    if getattr(bn, "running_var", None) is None:
        raise ReidError(f"RepVGG deploy needs batch-norm layers with running statistics, got "
                        f"{type(bn).__name__}; set MODEL.BACKBONE.NORM BN")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, norm: str) -> None:
        super().__init__()
        self.deploying = False
        self.in_channels, self.stride, self.groups = c_in, stride, groups
        self.nonlinearity = nn.ReLU()
        self.register_parameter("fused_weight", None)
        self.register_parameter("fused_bias", None)
        keeps_shape = c_in == c_out and stride == 1
        self.rbr_identity = get_norm(norm, c_in) if keeps_shape else None
        self.rbr_dense = conv_bn(c_in, c_out, 3, stride, groups, norm)
        self.rbr_1x1 = conv_bn(c_in, c_out, 1, stride, groups, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploying:
            return self.nonlinearity(F.conv2d(x, self.fused_weight, self.fused_bias,
                                              self.stride, 1, 1, self.groups))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)

    def identity_kernel(self) -> torch.Tensor:
        """The 3x3 (grouped) kernel of the identity map: 1 at the centre for channel i -> i."""
        per_group = self.in_channels // self.groups
        kernel = self.rbr_dense.conv.weight.new_zeros(self.in_channels, per_group, 3, 3)
        channels = torch.arange(self.in_channels)
        kernel[channels, channels % per_group, 1, 1] = 1.0
        return kernel

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = fold_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        # a 1x1 conv is a 3x3 conv with zeros around the centre (padding 0 vs 1 lines up)
        kernel_1x1, bias_1x1 = fold_bn(F.pad(self.rbr_1x1.conv.weight, [1, 1, 1, 1]),
                                       self.rbr_1x1.bn)
        kernel, bias = kernel + kernel_1x1, bias + bias_1x1
        if self.rbr_identity is not None:
            kernel_id, bias_id = fold_bn(self.identity_kernel(), self.rbr_identity)
            kernel, bias = kernel + kernel_id, bias + bias_id
        return kernel, bias

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace the branches by one 3x3 conv; equal to the eval-mode block. Irreversible."""
        if self.deploying:
            return
        kernel, bias = self.equivalent_kernel_bias()
        self.fused_weight = nn.Parameter(kernel.detach().clone())
        self.fused_bias = nn.Parameter(bias.detach().clone())
        self.rbr_identity = self.rbr_dense = self.rbr_1x1 = None
        self.deploying = True


class RepVGG(nn.Sequential):
    """stage0..stage4, run in that order."""

    def __init__(self, spec: RepVGGSpec, last_stride: int = 1, norm: str = "BN") -> None:
        super().__init__()
        self.deploying = False
        widths = spec.stage_widths()
        self.stage0 = RepVGGBlock(3, min(64, widths[0]), 2, 1, norm)
        c_in, layer = min(64, widths[0]), 1
        strides = (2, 2, 2, last_stride)
        for index, (depth, width, stride) in enumerate(zip(spec.depths, widths, strides), 1):
            blocks = []
            for block in range(depth):
                blocks.append(RepVGGBlock(c_in, width, stride if block == 0 else 1,
                                          spec.groups_of(layer), norm))
                c_in, layer = width, layer + 1
            self.add_module(f"stage{index}", nn.Sequential(*blocks))
        self.out_channels = c_in

    def deploy(self, mode: bool = True) -> RepVGG:
        """Fuse every block into a single 3x3 conv (inference form); returns ``self``.

        Uses BN's running statistics, so the fused model equals this one in eval mode.
        ``mode`` mirrors FastReID's signature; fusion cannot be undone.
        """
        if not mode:
            if self.deploying:
                raise ValueError("a deployed RepVGG cannot be turned back into branches")
            return self
        for module in self.modules():
            if isinstance(module, RepVGGBlock):
                module.fuse()
        self.deploying = True
        return self


@BACKBONE_REGISTRY.register()
def build_repvgg_backbone(cfg) -> RepVGG:
    options = cfg.MODEL.BACKBONE
    reject_switches(options, VARIANT_SWITCHES, "RepVGG")
    depth = parse_depth(options.DEPTH, SPECS, "a RepVGG depth", stripped)
    model = RepVGG(SPECS[depth], options.LAST_STRIDE, options.NORM)
    # RepVGG's ImageNet weights are not on a stable URL; FastReID reads them from a path too
    return finish_backbone(model, options, f"repvgg {depth}")
