"""MGN: FastReID's Multiple Granularity Network (Wang et al., 2018).

A ResNet stem up to ``layer3[0]`` is shared; three branches each get their own copy of the rest
of ``layer3`` and of ``layer4``:

* ``b1``: global branch, ``layer4`` as built (MODEL.BACKBONE.LAST_STRIDE);
* ``b2`` / ``b3``: ``layer4`` with stride 1, their map cut into 2 / 3 horizontal stripes.

Eight heads (``b1_head``, ``b2_head``, ``b21_head``, ``b22_head``, ``b3_head``, ``b31_head``,
``b32_head``, ``b33_head``) pool and classify the three whole maps and the five stripes. Module
and parameter names are FastReID's (``backbone.0`` = conv1 ... ``backbone.6`` = layer3[0],
``b1.0`` = rest of layer3, ``b1.1`` = layer4), so its MGN checkpoints load by name.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones import build_backbone
from reid.modeling.heads import build_heads
from reid.modeling.losses import build_losses
from reid.modeling.meta_arch.baseline import Baseline, drop_pixel_statistics
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY

RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

# stripes per branch: branch name -> names of its part heads (top to bottom)
PART_HEADS = {"b1": (), "b2": ("b21", "b22"), "b3": ("b31", "b32", "b33")}
# FastReID's order of the heads in the training losses and of the eval feature
HEAD_NAMES = ("b1", "b2", "b21", "b22", "b3", "b31", "b32", "b33")
FEATURE_ORDER = ("b1", "b2", "b3", "b21", "b22", "b31", "b32", "b33")

# Which head outputs each loss sees, and FastReID's weight for every term (1/8 for the eight
# classifiers, 1/5 for the five metric features). Metric losses see the three global features
# and, per part branch, its stripes' features concatenated (loss suffixes b22 and b33).
CLASSIFICATION_GROUPS = {name: (name,) for name in HEAD_NAMES}
METRIC_GROUPS = {"b1": ("b1",), "b2": ("b2",), "b3": ("b3",),
                 "b22": ("b21", "b22"), "b33": ("b31", "b32", "b33")}
LOSS_GROUPS = {
    "CrossEntropyLoss": (CLASSIFICATION_GROUPS, 1.0 / len(CLASSIFICATION_GROUPS)),
    "FocalLoss": (CLASSIFICATION_GROUPS, 1.0 / len(CLASSIFICATION_GROUPS)),
    "TripletLoss": (METRIC_GROUPS, 1.0 / len(METRIC_GROUPS)),
    "CircleLoss": (METRIC_GROUPS, 1.0 / len(METRIC_GROUPS)),
    "Cosface": (METRIC_GROUPS, 1.0 / len(METRIC_GROUPS)),
}


def split_resnet(backbone: nn.Module, name: str) -> tuple[nn.Sequential, nn.Sequential, nn.Module]:
    """(stem up to layer3[0], the rest of layer3, layer4) of a ResNet-style backbone."""
    missing = [part for part in RESNET_PARTS if not hasattr(backbone, part)]
    if missing:
        raise ReidError(f"MGN needs a ResNet-style backbone with {', '.join(RESNET_PARTS)}; "
                        f"MODEL.BACKBONE.NAME {name} has no {', '.join(missing)}")
    b = backbone
    stem = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3[0])
    return stem, nn.Sequential(*b.layer3[1:]), b.layer4


def with_unit_stride(layer: nn.Module) -> nn.Module:
    """A copy of ``layer`` whose strided convolutions have stride 1 (same weights), as FastReID's
    part-branch ``layer4``: the stripes need the taller map."""
    copied = copy.deepcopy(layer)
    for module in copied.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
    return copied


def horizontal_stripes(feature_map: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    stripes = torch.chunk(feature_map, count, dim=2)
    if len(stripes) != count:
        raise ReidError(f"MGN cuts the part branches' maps into {count} horizontal stripes but "
                        f"the map is {feature_map.shape[2]} rows high; use taller images "
                        "(INPUT.SIZE_TRAIN / INPUT.SIZE_TEST, e.g. 384 x 128)")
    return stripes


def grouped_outputs(outputs: dict[str, dict], heads: tuple[str, ...]) -> dict:
    """One head's training outputs, or the concatenated features of several heads."""
    if len(heads) == 1:
        return outputs[heads[0]]
    return {"features": torch.cat([outputs[h]["features"] for h in heads], dim=1)}


@META_ARCH_REGISTRY.register()
class MGN(nn.Module):
    """``model(batch)``: training -> dict of losses (``loss_cls_b1`` ... ``loss_triplet_b33``);
    eval -> B x 8D features, the eight heads' features in FastReID's order."""

    # normalisation and batch handling are Baseline's
    device = Baseline.device
    preprocess_image = Baseline.preprocess_image
    targets_of = Baseline.targets_of

    def __init__(self, cfg) -> None:
        super().__init__()
        stem, res_conv4, res_conv5 = split_resnet(build_backbone(cfg), cfg.MODEL.BACKBONE.NAME)
        part_conv5 = with_unit_stride(res_conv5)
        self.backbone = stem
        self.b1 = nn.Sequential(copy.deepcopy(res_conv4), copy.deepcopy(res_conv5))
        self.b2 = nn.Sequential(copy.deepcopy(res_conv4), copy.deepcopy(part_conv5))
        self.b3 = nn.Sequential(copy.deepcopy(res_conv4), copy.deepcopy(part_conv5))
        for name in HEAD_NAMES:
            setattr(self, f"{name}_head", build_heads(cfg))
        self.loss_plan = self._plan_losses(cfg)
        self.register_buffer("pixel_mean", Baseline._channel_vector(cfg.MODEL.PIXEL_MEAN,
                                                                    "PIXEL_MEAN"),
                             persistent=False)
        self.register_buffer("pixel_std", Baseline._channel_vector(cfg.MODEL.PIXEL_STD,
                                                                   "PIXEL_STD"),
                             persistent=False)
        self.register_load_state_dict_pre_hook(drop_pixel_statistics)

    @staticmethod
    def _plan_losses(cfg) -> list:
        """(loss fn, {suffix: heads}, weight) for every loss of MODEL.LOSSES.NAME."""
        names = list(cfg.MODEL.LOSSES.NAME)
        unsupported = [n for n in names if n not in LOSS_GROUPS]
        if unsupported:
            raise ReidError(f"MGN does not support MODEL.LOSSES.NAME {', '.join(unsupported)}; "
                            f"expected some of {', '.join(LOSS_GROUPS)}")
        return [(fn, *LOSS_GROUPS[name]) for name, fn in zip(names, build_losses(cfg))]

    def head(self, name: str) -> nn.Module:
        return getattr(self, f"{name}_head")

    def branch_maps(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The feature map each head pools: three whole branch maps and their stripes."""
        maps: dict[str, torch.Tensor] = {}
        for branch, parts in PART_HEADS.items():
            maps[branch] = getattr(self, branch)(features)
            if parts:
                maps.update(zip(parts, horizontal_stripes(maps[branch], len(parts))))
        return maps

    def forward(self, batch):
        images = self.preprocess_image(batch)
        maps = self.branch_maps(self.backbone(images))
        if not self.training:
            return torch.cat([self.head(name)(maps[name]) for name in FEATURE_ORDER], dim=1)
        targets = self.targets_of(batch)
        outputs = {name: self.head(name)(maps[name], targets) for name in HEAD_NAMES}
        return self.losses(outputs, targets)

    def losses(self, outputs: dict[str, dict], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each loss once per head group, suffixed with the group (``loss_cls_b21``)."""
        result: dict[str, torch.Tensor] = {}
        for loss_fn, groups, weight in self.loss_plan:
            for suffix, heads in groups.items():
                for key, value in loss_fn(grouped_outputs(outputs, heads), targets).items():
                    result[f"{key}_{suffix}"] = value * weight
        return result
