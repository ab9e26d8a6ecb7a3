"""ResNeSt backbones (50x/101x/200x/269x) with FastReID's layout and parameter names.

ResNeSt = ResNet-D (deep 3-conv stem, average-pool shortcut) + split-attention 3x3 convs
(radix 2, cardinality 1, bottleneck width 64) + "avd" (the stride of a block taken by an average
pool after the split-attention conv). Names follow FastReID 1.4 and the ResNeSt release files:
``conv1.{0,1,3,4,6}`` (stem), ``bn1``,
``layerN.i.{conv1,bn1,conv2.{conv,bn0,fc1,bn1,fc2},conv3,bn3}``, ``layerN.0.downsample.{1,2}``
and, with WITH_NL, ``NL_2.j`` / ``NL_3.j``. WITH_IBN puts instance-batch norm in every block's
``bn1`` (``bn1.IN``, ``bn1.BN``), in all four stages as FastReID's ResNeSt does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import (finish_backbone, init_conv_norm_weights, parse_depth,
                                            reject_switches, with_x_suffix)
from reid.modeling.layers.ibn import IBN
from reid.modeling.layers.non_local import NonLocal
from reid.modeling.layers.norm import get_norm
from reid.modeling.layers.splat import SplitAttentionConv2d

RADIX = 2
EXPANSION = 4
STAGE_WIDTHS = (64, 128, 256, 512)
# non-local blocks per stage, placed after the last blocks of the stage (FastReID's choice)
NON_LOCAL_PER_STAGE = (0, 2, 3, 0)
# the ResNeSt authors' ImageNet files; FastReID's mirror second (same file names)
RELEASE_URLS = ("https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step1/{}.pth",
                "https://s3.us-west-1.wasabisys.com/resnest/torch/{}.pth")


@dataclass(frozen=True)
class Arch:
    layers: tuple[int, int, int, int]
    stem_width: int
    release_file: str


ARCHS = {
    "50x": Arch((3, 4, 6, 3), 32, "resnest50-528c19ca"),
    "101x": Arch((3, 4, 23, 3), 64, "resnest101-22405ba7"),
    "200x": Arch((3, 24, 36, 3), 64, "resnest200-75117900"),
    "269x": Arch((3, 30, 48, 8), 64, "resnest269-0cc87c48"),
}


class Bottleneck(nn.Module):
    """1x1 -> split-attention 3x3 -> [avd pool] -> 1x1, with a residual shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str, with_ibn: bool,
                 downsample: nn.Module | None, is_first: bool = False, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = IBN(channels, norm) if with_ibn else get_norm(norm, channels)
        # avd: the first block of a stage strides by average pooling after the attention conv;
        # at stride 1 (stage 4 with LAST_STRIDE 1) the pool stays as a 3x3 smoothing, as in
        # FastReID, so its checkpoints compute the same features here
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if stride > 1 or is_first else None
        self.conv2 = SplitAttentionConv2d(channels, channels, 3, padding=dilation,
                                          dilation=dilation, bias=False,
                                          radix=RADIX, norm=norm)
        self.conv3 = nn.Conv2d(channels, channels * EXPANSION, 1, bias=False)
        self.bn3 = get_norm(norm, channels * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def deep_stem(stem_width: int, norm: str) -> nn.Sequential:
    """Three 3x3 convs (stride 2 first) in place of ResNet's 7x7; the last norm is ``bn1``."""
    return nn.Sequential(
        nn.Conv2d(3, stem_width, 3, 2, 1, bias=False), get_norm(norm, stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=False), get_norm(norm, stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width * 2, 3, 1, 1, bias=False))


def avg_down_shortcut(in_channels: int, out_channels: int, stride: int,
                      norm: str) -> nn.Sequential:
    """ResNet-D shortcut: average pool (ceil mode, to match avd on odd sizes) then 1x1 conv."""
    return nn.Sequential(
        nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        get_norm(norm, out_channels))


def non_local_positions(blocks: int, count: int) -> list[int]:
    """Indices of the blocks a stage's non-local modules follow: its last ``count`` blocks."""
    return list(range(blocks - count, blocks))


class ResNeSt(nn.Module):
    def __init__(self, arch: Arch, last_stride: int = 1, norm: str = "BN",
                 with_ibn: bool = False, with_nl: bool = False) -> None:
        super().__init__()
        self.conv1 = deep_stem(arch.stem_width, norm)
        self.bn1 = get_norm(norm, arch.stem_width * 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = arch.stem_width * 2
        strides = (1, 2, 2, last_stride)
        for index, (width, blocks, stride) in enumerate(zip(STAGE_WIDTHS, arch.layers, strides)):
            # stage 1 keeps its resolution and, as in ResNeSt, has no avd pool
            # As FastReID: a stage 4 kept at stride 1 dilates its later blocks by 2 instead.
            dilation = 2 if index == 3 and stride == 1 else 1
            layer = make_stage(in_channels, width, blocks, stride, norm, with_ibn,
                               is_first=index > 0, dilation=dilation)
            setattr(self, f"layer{index + 1}", layer)
            in_channels = width * EXPANSION
        self.out_channels = in_channels
        # conv weights only: the split-attention fc biases keep PyTorch's default init
        init_conv_norm_weights(self, zero_conv_bias=False)
        # stage index -> {block index: index into NL_<stage>}; indices rather than module
        # references, so replicas (DataParallel, deepcopy) look up their own modules
        self._non_local_after: list[dict[int, int]] = [{} for _ in STAGE_WIDTHS]
        # built after the init so their zeroed output norm keeps them the identity at start
        if with_nl:
            self._build_non_local(arch.layers, norm)

    def _build_non_local(self, layers: tuple[int, ...], norm: str) -> None:
        for index, (width, blocks, count) in enumerate(
                zip(STAGE_WIDTHS, layers, NON_LOCAL_PER_STAGE)):
            modules = nn.ModuleList(NonLocal(width * EXPANSION, norm) for _ in range(count))
            setattr(self, f"NL_{index + 1}", modules)
            positions = non_local_positions(blocks, count)
            self._non_local_after[index] = {block: j for j, block in enumerate(positions)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index, non_local_after in enumerate(self._non_local_after, start=1):
            for block_index, block in enumerate(getattr(self, f"layer{index}")):
                x = block(x)
                if block_index in non_local_after:
                    x = getattr(self, f"NL_{index}")[non_local_after[block_index]](x)
        return x


def make_stage(in_channels: int, width: int, blocks: int, stride: int, norm: str,
               with_ibn: bool, is_first: bool, dilation: int = 1) -> nn.Sequential:
    out_channels = width * EXPANSION
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = avg_down_shortcut(in_channels, out_channels, stride, norm)
    layers = [Bottleneck(in_channels, width, stride, norm, with_ibn, downsample, is_first)]
    layers += [Bottleneck(out_channels, width, 1, norm, with_ibn, None, dilation=dilation)
               for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def release_urls(arch: Arch) -> list[str]:
    return [url.format(arch.release_file) for url in RELEASE_URLS]


def check_supported(backbone_cfg) -> None:
    """Refuse the options that would silently build another model or fail mid-forward."""
    # FastReID ignores WITH_SE here; saying so beats silently training another model
    reject_switches(backbone_cfg, ("WITH_SE",), "build_resnest_backbone",
                    "its split attention replaces SE")
    if backbone_cfg.NORM == "GN":
        # the attention branch is 1x1 with 32 channels in stage 1: GroupNorm(32) would
        # normalise single values (torch refuses; FastReID fails at the first forward)
        raise ReidError("MODEL.BACKBONE.NORM 'GN' does not work with ResNeSt (its 1x1 attention "
                        "branch leaves one value per group); use BN, syncBN, GhostBN or FrozenBN")


@BACKBONE_REGISTRY.register()
def build_resnest_backbone(cfg) -> ResNeSt:
    backbone_cfg = cfg.MODEL.BACKBONE
    check_supported(backbone_cfg)
    depth = parse_depth(backbone_cfg.DEPTH, ARCHS, "a ResNeSt depth", with_x_suffix)
    arch = ARCHS[depth]
    model = ResNeSt(arch, backbone_cfg.LAST_STRIDE, backbone_cfg.NORM,
                    backbone_cfg.WITH_IBN, backbone_cfg.WITH_NL)
    return finish_backbone(model, backbone_cfg, f"resnest {depth}", lambda: release_urls(arch))
