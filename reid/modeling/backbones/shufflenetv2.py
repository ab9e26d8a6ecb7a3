"""ShuffleNetV2 (Ma et al. ECCV 2018) in Megvii's layout, FastReID's module and parameter names.

FastReID uses the authors' (Megvii ShuffleNet-Series) layout, not torchvision's: ``first_conv``,
``features.{i}`` blocks with ``branch_main`` / ``branch_proj`` Sequentials, ``conv_last``. A
downsampling block keeps all ``in`` channels in the projection branch and gives the main branch
``out - in`` (torchvision splits ``out`` in halves), and the channel shuffle happens at the start
of a stride-1 block (even channels pass through, odd ones go through the main branch). The
shapes therefore differ from torchvision's and its ImageNet files cannot load; use Megvii's
released ShuffleNetV2 file (``{"state_dict": {"module.first_conv.0.weight": ...}}``) through
MODEL.BACKBONE.PRETRAIN_PATH, as FastReID does.

DEPTH is "0.5x", "1.0x", "1.5x" or "2.0x". The output stride is 32 whatever
MODEL.BACKBONE.LAST_STRIDE says, as in FastReID.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import VARIANT_SWITCHES, parse_depth, reject_switches
from reid.modeling.backbones.pretrained import load_pretrained
from reid.modeling.layers.norm import get_norm

logger = logging.getLogger(__name__)

STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS = 24
# DEPTH -> output channels of the three stages and of conv_last
CHANNELS = {
    "0.5x": (48, 96, 192, 1024),
    "1.0x": (116, 232, 464, 1024),
    "1.5x": (176, 352, 704, 1024),
    "2.0x": (244, 488, 976, 2048),
}


def split_even_odd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The channel shuffle of Megvii's block: even channels, odd channels."""
    return x[:, 0::2], x[:, 1::2]


def depthwise_pointwise(in_channels: int, out_channels: int, kernel_size: int, stride: int,
                        norm: str) -> list[nn.Module]:
    """Depthwise kxk conv + norm (linear), then 1x1 conv + norm + ReLU: the tail both branches
    share, as a flat list so each branch keeps Megvii's flat indices."""
    return [nn.Conv2d(in_channels, in_channels, kernel_size, stride, kernel_size // 2,
                      groups=in_channels, bias=False),
            get_norm(norm, in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            get_norm(norm, out_channels),
            nn.ReLU(inplace=True)]


class ShuffleV2Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int,
                 norm: str, kernel_size: int = 3) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV2Block stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.branch_main = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            get_norm(norm, mid_channels),
            nn.ReLU(inplace=True),
            *depthwise_pointwise(mid_channels, out_channels - in_channels, kernel_size, stride,
                                 norm))
        # a stride-1 block passes half its input through untouched; a stride-2 block must
        # downsample that half too, with its own depthwise + pointwise pair
        self.branch_proj = None if stride == 1 else nn.Sequential(
            *depthwise_pointwise(in_channels, in_channels, kernel_size, stride, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_proj is None:
            passed, processed = split_even_odd(x)
            return torch.cat((passed, self.branch_main(processed)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


def make_blocks(norm: str, stage_channels: tuple[int, ...]) -> nn.Sequential:
    """All stages as one flat Sequential (FastReID's ``features.{i}``)."""
    blocks = []
    in_channels = STEM_CHANNELS
    for repeats, out_channels in zip(STAGE_REPEATS, stage_channels):
        mid = out_channels // 2
        blocks.append(ShuffleV2Block(in_channels, out_channels, mid, 2, norm))
        # a stride-1 block's main branch sees only half of the channels
        blocks += [ShuffleV2Block(out_channels // 2, out_channels, mid, 1, norm)
                   for _ in range(repeats - 1)]
        in_channels = out_channels
    return nn.Sequential(*blocks)


class ShuffleNetV2(nn.Module):
    def __init__(self, channels: tuple[int, int, int, int], norm: str = "BN") -> None:
        super().__init__()
        *stage_channels, last = channels
        self.first_conv = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False),
            get_norm(norm, STEM_CHANNELS),
            nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.features = make_blocks(norm, tuple(stage_channels))
        self.conv_last = nn.Sequential(
            nn.Conv2d(stage_channels[-1], last, 1, bias=False),
            get_norm(norm, last),
            nn.ReLU(inplace=True))
        self.out_channels = last
        self._init_weights()
        self.register_load_state_dict_pre_hook(reject_torchvision_layout)

    def _init_weights(self) -> None:
        # the authors' scheme: small stem weights, std 1 / fan-in-per-group elsewhere
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                std = 0.01 if name.startswith("first_conv") else 1.0 / module.weight.shape[1]
                nn.init.normal_(module.weight, 0, std)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.constant_(module.bias, 0.0001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.first_conv(x))
        return self.conv_last(self.features(x))


def reject_torchvision_layout(model: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: torchvision's file would silently load nothing; say why."""
    if f"{prefix}stage2.0.branch1.0.weight" in state_dict:
        raise ReidError("torchvision's ShuffleNetV2 weights do not fit FastReID's (Megvii's) "
                        "ShuffleNetV2 layout; use Megvii's ShuffleNetV2 ImageNet file")


@BACKBONE_REGISTRY.register()
def build_shufflenetv2_backbone(cfg) -> ShuffleNetV2:
    options = cfg.MODEL.BACKBONE
    reject_switches(options, VARIANT_SWITCHES, "build_shufflenetv2_backbone")
    depth = parse_depth(options.DEPTH, CHANNELS, "a ShuffleNetV2 size")
    model = ShuffleNetV2(CHANNELS[depth], options.NORM)
    model.description = f"shufflenetv2 {depth}"
    if options.PRETRAIN:
        if not options.PRETRAIN_PATH:
            logger.warning("ShuffleNetV2 ImageNet weights come only from "
                           "MODEL.BACKBONE.PRETRAIN_PATH (Megvii's file); training from scratch")
        else:
            load_pretrained(model, options.PRETRAIN_PATH, [])
    return model
