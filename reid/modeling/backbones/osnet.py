"""OSNet (omni-scale network, Zhou et al. ICCV 2019) with FastReID's module and parameter names.

Layout (``conv1, conv2..conv4, conv5``; blocks ``conv1, conv2a..conv2d, gate.fc1/fc2, conv3,
downsample, IN``) follows FastReID and the OSNet release, so both FastReID checkpoints and the
official ImageNet files (``osnet_x1_0_imagenet.pth`` ...) load by name. WITH_IBN gives OSNet-IBN:
instance norm replaces the stem's norm and follows each block of the first stage.

The output stride is 16 whatever MODEL.BACKBONE.LAST_STRIDE says, as in FastReID.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.common import init_conv_norm_weights, parse_depth, reject_switches
from reid.modeling.backbones.pretrained import hub_checkpoint_dir, load_pretrained
from reid.modeling.layers.norm import get_norm

logger = logging.getLogger(__name__)

# DEPTH -> channels of the stem and of the three stages; each stage has two blocks
STAGE_CHANNELS = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}
BLOCKS_PER_STAGE = 2


class ConvLayer(nn.Module):
    """conv + norm + ReLU; the norm is an affine instance norm in the IBN stem."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str,
                 stride: int = 1, padding: int = 0, groups: int = 1,
                 instance_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, groups=groups, bias=False)
        self.bn = (nn.InstanceNorm2d(out_channels, affine=True) if instance_norm
                   else get_norm(norm, out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    """1x1 conv + norm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__(in_channels, out_channels, 1, norm)


class Conv1x1Linear(nn.Module):
    """1x1 conv + norm, no activation (block outputs and projection shortcuts)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Pointwise (linear) then depthwise 3x3, one norm + ReLU after both."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = get_norm(norm, channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Channel weights from a squeeze-excitation style bottleneck (reduction 16, sigmoid)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc2(self.relu(self.fc1(self.global_avgpool(x))))
        return x * self.gate_activation(weights)


def light_stream(depth: int, channels: int, norm: str) -> nn.Sequential:
    """``depth`` stacked LightConv3x3: a receptive field of 3, 5, 7 or 9 pixels."""
    return nn.Sequential(*(LightConv3x3(channels, norm) for _ in range(depth)))


class OSBlock(nn.Module):
    """Bottleneck with four streams of growing receptive field fused by one shared gate."""

    bottleneck_reduction = 4

    def __init__(self, in_channels: int, out_channels: int, norm: str,
                 instance_norm: bool = False) -> None:
        super().__init__()
        mid = out_channels // self.bottleneck_reduction
        self.conv1 = Conv1x1(in_channels, mid, norm)
        # a single LightConv3x3 is stored bare, the deeper streams as Sequentials (FastReID keys)
        self.conv2a = LightConv3x3(mid, norm)
        self.conv2b = light_stream(2, mid, norm)
        self.conv2c = light_stream(3, mid, norm)
        self.conv2d = light_stream(4, mid, norm)
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, out_channels, norm)
        self.downsample = (Conv1x1Linear(in_channels, out_channels, norm)
                           if in_channels != out_channels else None)
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.conv1(x)
        fused = sum(self.gate(stream(squeezed))
                    for stream in (self.conv2a, self.conv2b, self.conv2c, self.conv2d))
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(fused) + identity
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


def make_stage(in_channels: int, out_channels: int, norm: str, reduce_size: bool,
               instance_norm: bool = False) -> nn.Sequential:
    """Two OSBlocks, then (when ``reduce_size``) a 1x1 conv and a 2x2 average pool."""
    layers = [OSBlock(in_channels, out_channels, norm, instance_norm)]
    layers += [OSBlock(out_channels, out_channels, norm, instance_norm)
               for _ in range(BLOCKS_PER_STAGE - 1)]
    if reduce_size:
        layers.append(nn.Sequential(Conv1x1(out_channels, out_channels, norm),
                                    nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNet(nn.Module):
    def __init__(self, channels: tuple[int, int, int, int], norm: str = "BN",
                 with_ibn: bool = False) -> None:
        super().__init__()
        stem, c2, c3, c4 = channels
        self.conv1 = ConvLayer(3, stem, 7, norm, stride=2, padding=3, instance_norm=with_ibn)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # IBN-style: instance norm only in the shallow layers, where style (colour, contrast)
        # lives; deeper layers keep batch norm for discrimination
        self.conv2 = make_stage(stem, c2, norm, reduce_size=True, instance_norm=with_ibn)
        self.conv3 = make_stage(c2, c3, norm, reduce_size=True)
        self.conv4 = make_stage(c3, c4, norm, reduce_size=False)
        self.conv5 = Conv1x1(c4, c4, norm)
        self.out_channels = c4
        init_conv_norm_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        return self.conv5(x)


def release_file_name(depth: str, with_ibn: bool) -> str:
    """The OSNet release's ImageNet file, under the name FastReID and torchreid cache it as."""
    return f"osnet_{'ibn_' if with_ibn else ''}{depth}_imagenet.pth"


def load_imagenet_weights(model: OSNet, pretrain_path: str, file_name: str) -> bool:
    """PRETRAIN_PATH, else the release file in torch's hub cache. Never downloads: the
    release files sit on Google Drive, which needs a confirmation page a plain GET cannot pass."""
    if not pretrain_path:
        cached = hub_checkpoint_dir() / file_name
        if not cached.is_file():
            logger.warning("OSNet ImageNet weights not found; training from scratch. Put %s "
                           "(from the OSNet release) in %s or set MODEL.BACKBONE.PRETRAIN_PATH.",
                           file_name, hub_checkpoint_dir())
            return False
        pretrain_path = str(cached)
    return load_pretrained(model, pretrain_path, [])


@BACKBONE_REGISTRY.register()
def build_osnet_backbone(cfg) -> OSNet:
    options = cfg.MODEL.BACKBONE
    reject_switches(options, ("WITH_SE", "WITH_NL"), "build_osnet_backbone")
    depth = parse_depth(options.DEPTH, STAGE_CHANNELS, "an OSNet depth")
    with_ibn = bool(options.WITH_IBN)
    model = OSNet(STAGE_CHANNELS[depth], options.NORM, with_ibn)
    model.description = f"osnet{'_ibn' if with_ibn else ''} {depth}"
    if options.PRETRAIN:
        load_imagenet_weights(model, options.PRETRAIN_PATH, release_file_name(depth, with_ibn))
    return model
