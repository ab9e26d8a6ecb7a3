"""ResNet backbones (18/34/50/101/152) with FastReID's and torchvision's parameter names.

``conv1, bn1, layer1..layer4`` and, in blocks, ``conv1/bn1/conv2/bn2[/conv3/bn3], downsample.0/1``,
so torchvision ImageNet files and FastReID checkpoints load by name. There is no ``fc``: the
backbone returns the last feature map (B x C x H/16 x W/16 with LAST_STRIDE 1, H/32 with 2).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.pretrained import load_pretrained
from reid.modeling.layers.norm import get_norm

logger = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = get_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = get_norm(norm, channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv, as in torchvision and FastReID."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = get_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = get_norm(norm, channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = get_norm(norm, channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class Arch:
    block: type[nn.Module]
    layers: tuple[int, int, int, int]
    torchvision_name: str


ARCHS = {
    "18x": Arch(BasicBlock, (2, 2, 2, 2), "resnet18"),
    "34x": Arch(BasicBlock, (3, 4, 6, 3), "resnet34"),
    "50x": Arch(Bottleneck, (3, 4, 6, 3), "resnet50"),
    "101x": Arch(Bottleneck, (3, 4, 23, 3), "resnet101"),
    "152x": Arch(Bottleneck, (3, 8, 36, 3), "resnet152"),
}


class ResNet(nn.Module):
    def __init__(self, arch: Arch, last_stride: int = 1, norm: str = "BN") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._in_channels = 64
        strides = (1, 2, 2, last_stride)
        for index, (channels, blocks, stride) in enumerate(
                zip((64, 128, 256, 512), arch.layers, strides), start=1):
            layer = self._make_layer(arch.block, channels, blocks, stride, norm)
            setattr(self, f"layer{index}", layer)
        self.out_channels = self._in_channels
        self._init_weights()

    def _make_layer(self, block: type[nn.Module], channels: int, blocks: int, stride: int,
                    norm: str) -> nn.Sequential:
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride, bias=False),
                get_norm(norm, out_channels))
        layers = [block(self._in_channels, channels, stride, norm, downsample)]
        self._in_channels = out_channels
        layers += [block(out_channels, channels, 1, norm, None) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def parse_depth(depth: str) -> str:
    """"50x", "50" -> "50x"; an unknown depth is the user's error."""
    key = str(depth).strip()
    key = key if key.endswith("x") else f"{key}x"
    if key not in ARCHS:
        raise ReidError(f"MODEL.BACKBONE.DEPTH {depth!r} is not a ResNet depth; "
                        f"expected one of {', '.join(ARCHS)}")
    return key


def check_unsupported(cfg) -> None:
    for key in ("WITH_IBN", "WITH_SE", "WITH_NL"):
        if cfg.MODEL.BACKBONE[key]:
            raise ReidError(f"MODEL.BACKBONE.{key} True is not supported yet; set it to False")


def torchvision_urls(name: str) -> list[str]:
    """torchvision's ImageNet files for ``name``, oldest (IMAGENET1K_V1, FastReID's) first."""
    try:
        from torchvision.models import get_model_weights
        return [weights.url for weights in get_model_weights(name)]
    except Exception:  # noqa: BLE001 - torchvision missing or renamed: no known files
        logger.debug("torchvision has no weights listed for %s", name)
        return []


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg) -> ResNet:
    check_unsupported(cfg)
    depth = parse_depth(cfg.MODEL.BACKBONE.DEPTH)
    arch = ARCHS[depth]
    model = ResNet(arch, cfg.MODEL.BACKBONE.LAST_STRIDE, cfg.MODEL.BACKBONE.NORM)
    model.description = f"resnet {depth}"
    if cfg.MODEL.BACKBONE.PRETRAIN:
        urls = torchvision_urls(arch.torchvision_name)
        load_pretrained(model, cfg.MODEL.BACKBONE.PRETRAIN_PATH, urls)
    return model
