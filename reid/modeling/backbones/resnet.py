"""ResNet backbones (18/34/50/101/152) with FastReID's and torchvision's parameter names.

``conv1, bn1, layer1..layer4`` and, in blocks, ``conv1/bn1/conv2/bn2[/conv3/bn3], downsample.0/1``,
so torchvision ImageNet files and FastReID checkpoints load by name. There is no ``fc``: the
backbone returns the last feature map (B x C x H/16 x W/16 with LAST_STRIDE 1, H/32 with 2).

FastReID's variants, with its names:
- WITH_IBN: IBN-a (``bn1.IN.*`` + ``bn1.BN.*``) as the first norm of every block of layer1-3;
- WITH_SE: squeeze-excitation (``se.fc.0/2``) on the residual branch of every block;
- WITH_NL: non-local blocks after the last blocks of layer2 / layer3, held in the ModuleLists
  ``NL_2`` / ``NL_3`` (``NL_3.0.g/theta/phi/W.*``): 2 + 3 for 50x, 2 + 9 for 101x.
The stem max-pool is FastReID's (3x3, stride 2, no padding, ceil mode) rather than torchvision's
(padding 1): the same output size for even inputs, but windows shifted by one pixel, and
FastReID's checkpoints were trained with it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import (finish_backbone, init_conv_norm_weights, parse_depth,
                                            torchvision_urls, with_x_suffix)
from reid.modeling.layers.ibn import IBN
from reid.modeling.layers.non_local import NonLocal
from reid.modeling.layers.norm import get_norm
from reid.modeling.layers.se import SELayer

logger = logging.getLogger(__name__)

NO_NONLOCAL = (0, 0, 0, 0)
IBN_NET_RELEASE = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"


def first_norm(norm: str, channels: int, with_ibn: bool) -> nn.Module:
    """A block's first norm layer: IBN-a when asked for, else ``norm``."""
    return IBN(channels, norm) if with_ibn else get_norm(norm, channels)


def squeeze_excitation(channels: int, with_se: bool) -> nn.Module:
    # an Identity has no parameters, so the state dict without SE is the plain one
    return SELayer(channels) if with_se else nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str,
                 downsample: nn.Module | None, with_ibn: bool = False,
                 with_se: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = first_norm(norm, channels, with_ibn)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = get_norm(norm, channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = squeeze_excitation(channels, with_se)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv, as in torchvision and FastReID.

    Subclasses change the inner width and grouping of the 3x3 conv (ResNeXt).
    """

    expansion = 4
    groups = 1

    @classmethod
    def inner_width(cls, channels: int) -> int:
        return channels

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str,
                 downsample: nn.Module | None, with_ibn: bool = False,
                 with_se: bool = False) -> None:
        super().__init__()
        width = self.inner_width(channels)
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = first_norm(norm, width, with_ibn)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=self.groups, bias=False)
        self.bn2 = get_norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = get_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = squeeze_excitation(out_channels, with_se)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem + four stages of ``block``; shared by the ResNet and ResNeXt builders.

    ``ibn_layers``: the stages (1..4) whose blocks use IBN-a; ``nl_layers``: per stage, how many
    of its last blocks are each followed by a non-local block; ``maxpool``: the stem pooling
    (default FastReID ResNet's).
    """

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int, int],
                 last_stride: int = 1, norm: str = "BN", ibn_layers: tuple[int, ...] = (),
                 with_se: bool = False, nl_layers: tuple[int, int, int, int] = NO_NONLOCAL,
                 maxpool: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        if maxpool is None:
            maxpool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.maxpool = maxpool
        self._in_channels = 64
        stage_channels = []
        strides = (1, 2, 2, last_stride)
        for stage, (channels, blocks, stride) in enumerate(
                zip((64, 128, 256, 512), layers, strides), start=1):
            layer = self._make_layer(block, channels, blocks, stride, norm,
                                     with_ibn=stage in ibn_layers, with_se=with_se)
            setattr(self, f"layer{stage}", layer)
            stage_channels.append(self._in_channels)
        self.out_channels = self._in_channels
        init_conv_norm_weights(self)
        # built after the init above, as FastReID does: their convs keep PyTorch's default
        # init and their output norm stays zero (the block starts as an identity)
        self._add_nonlocal_blocks(nl_layers, stage_channels, norm)

    def _make_layer(self, block: type[nn.Module], channels: int, blocks: int, stride: int,
                    norm: str, with_ibn: bool, with_se: bool) -> nn.Sequential:
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride, bias=False),
                get_norm(norm, out_channels))
        options = {"with_ibn": with_ibn, "with_se": with_se}
        layers = [block(self._in_channels, channels, stride, norm, downsample, **options)]
        self._in_channels = out_channels
        layers += [block(out_channels, channels, 1, norm, None, **options)
                   for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _add_nonlocal_blocks(self, nl_layers: tuple[int, ...], stage_channels: list[int],
                             norm: str) -> None:
        for stage, (count, channels) in enumerate(zip(nl_layers, stage_channels), start=1):
            if count:
                setattr(self, f"NL_{stage}",
                        nn.ModuleList(NonLocal(channels, norm) for _ in range(count)))

    def _run_stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        blocks = getattr(self, f"layer{stage}")
        nonlocal_blocks = getattr(self, f"NL_{stage}", ())
        # the non-local blocks follow the stage's last len(nonlocal_blocks) blocks
        first_followed = len(blocks) - len(nonlocal_blocks)
        for index, block in enumerate(blocks):
            x = block(x)
            if index >= first_followed:
                x = nonlocal_blocks[index - first_followed](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = self._run_stage(stage, x)
        return x


@dataclass(frozen=True)
class Arch:
    block: type[nn.Module]
    layers: tuple[int, int, int, int]
    torchvision_name: str | None
    # FastReID's non-local layout; None where FastReID defines none
    nl_layers: tuple[int, int, int, int] | None = NO_NONLOCAL


ARCHS = {
    "18x": Arch(BasicBlock, (2, 2, 2, 2), "resnet18"),
    "34x": Arch(BasicBlock, (3, 4, 6, 3), "resnet34"),
    "50x": Arch(Bottleneck, (3, 4, 6, 3), "resnet50", (0, 2, 3, 0)),
    "101x": Arch(Bottleneck, (3, 4, 23, 3), "resnet101", (0, 2, 9, 0)),
    "152x": Arch(Bottleneck, (3, 8, 36, 3), "resnet152", None),
}
# IBN-a sits in layer1-3 only: layer4's features feed the re-id head and keep pure BN
RESNET_IBN_LAYERS = (1, 2, 3)
# IBN-Net's ImageNet files (the ones FastReID uses), by (depth, WITH_SE)
IBN_NET_FILES = {
    ("18x", False): "resnet18_ibn_a-2f571257.pth",
    ("34x", False): "resnet34_ibn_a-94bc1577.pth",
    ("50x", False): "resnet50_ibn_a-d9d0bb7b.pth",
    ("101x", False): "resnet101_ibn_a-59ea0ac6.pth",
    ("101x", True): "se_resnet101_ibn_a-fabed4e2.pth",
}


def check_last_stride(last_stride: int) -> None:
    if last_stride not in (1, 2):
        raise ReidError(f"MODEL.BACKBONE.LAST_STRIDE must be 1 or 2; got {last_stride!r}")


def nonlocal_layout(arch: Arch, description: str, with_nl: bool) -> tuple[int, int, int, int]:
    """Non-local blocks per stage for WITH_NL: FastReID's layout for this depth."""
    if not with_nl:
        return NO_NONLOCAL
    if arch.nl_layers is None:
        raise ReidError(f"MODEL.BACKBONE.WITH_NL True has no non-local layout for {description} "
                        "(FastReID defines one for 50x and 101x); set it to False")
    if arch.nl_layers == NO_NONLOCAL:
        # FastReID accepts this combination and builds no block; say so rather than fail
        logger.warning("MODEL.BACKBONE.WITH_NL adds no non-local block to %s "
                       "(FastReID places them in 50x and 101x only)", description)
    return arch.nl_layers


def describe(family: str, depth: str, with_ibn: bool, with_se: bool, with_nl: bool) -> str:
    """e.g. "resnet 50x" or "resnet 50x (ibn, se)", for messages."""
    variants = [name for name, on in (("ibn", with_ibn), ("se", with_se), ("nl", with_nl)) if on]
    return f"{family} {depth}" + (f" ({', '.join(variants)})" if variants else "")


def imagenet_urls(with_ibn: bool, ibn_net_file: str | None,
                  torchvision_name: str | None) -> list[str]:
    """ImageNet files for a ResNet-style variant: IBN-Net's release file for IBN, else
    torchvision's; None where that source has no file for the variant."""
    if with_ibn:
        return [IBN_NET_RELEASE + ibn_net_file] if ibn_net_file else []
    return torchvision_urls(torchvision_name)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg) -> ResNet:
    options = cfg.MODEL.BACKBONE
    depth = parse_depth(options.DEPTH, ARCHS, "a ResNet depth", with_x_suffix)
    check_last_stride(options.LAST_STRIDE)
    arch = ARCHS[depth]
    description = describe("resnet", depth, options.WITH_IBN, options.WITH_SE, options.WITH_NL)
    model = ResNet(arch.block, arch.layers, options.LAST_STRIDE, options.NORM,
                   ibn_layers=RESNET_IBN_LAYERS if options.WITH_IBN else (),
                   with_se=options.WITH_SE,
                   nl_layers=nonlocal_layout(arch, description, options.WITH_NL))
    # torchvision's files have no SE layers: with WITH_SE those start from their init (the
    # loader names them as missing) and everything else from ImageNet
    return finish_backbone(model, options, description, lambda: imagenet_urls(
        options.WITH_IBN, IBN_NET_FILES.get((depth, options.WITH_SE)), arch.torchvision_name))
