"""What a config's model costs: parameters, FLOPs and activations of one test-size image,
feature size.

FLOPs and activations come from one eval forward of a single image at the test input size
(:mod:`reid.utils.analysis`). FLOPs (``torch.utils.flop_counter.FlopCounterMode``) count a
multiply-add as 2 FLOPs and only convolutions, matrix products and attention: normalisation,
activations, pooling and the model's pixel normalisation are left out (a few percent at most
for ResNets), as in most published GFLOPs. Activations are the output elements of the same
operators, as fvcore and FastReID count them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from reid.config import CfgNode
from reid.data.transforms import crop_size
from reid.inference import inference_config
from reid.modeling import build_model
from reid.utils.analysis import count_operators

FLOPS_NOTE = "multiply-add = 2 FLOPs; convolutions, matrix products and attention only"
ACTIVATIONS_NOTE = "output elements of convolutions, matrix products and attention"
GREY = 128.0  # a mid-grey test image: any input gives the same FLOPs


@dataclass
class ModelInfo:
    meta_architecture: str
    backbone: str
    head: str
    parameters: int
    trainable_parameters: int
    flops: int
    input_size: tuple[int, int]
    feature_dim: int
    activations: int = 0

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def as_dict(self) -> dict:
        return {**asdict(self), "gflops": self.gflops, "flops_note": FLOPS_NOTE,
                "activations_note": ACTIVATIONS_NOTE}


def eval_input_size(cfg: CfgNode) -> tuple[int, int]:
    """(height, width) of the images the model sees at test time (after a center crop)."""
    if cfg.INPUT.CROP.ENABLED:
        return crop_size(cfg.INPUT.CROP)
    height, width = (int(s) for s in cfg.INPUT.SIZE_TEST)
    return height, width


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, those that require gradients)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def count_forward(model: nn.Module, size: tuple[int, int]) -> tuple[int, int, int]:
    """(FLOPs, activations of one eval forward of a 1 x 3 x H x W image, feature dimension)."""
    images = torch.full((1, 3, *size), GREY)
    model.eval()
    counts, features = count_operators(model, images)
    return counts.total_flops, counts.total_activations, int(features.shape[-1])


def describe_model(cfg: CfgNode) -> ModelInfo:
    """Build ``cfg``'s inference model (no ImageNet weights) and measure it on the CPU."""
    cfg = inference_config(cfg).clone()
    cfg.MODEL.BACKBONE.PRETRAIN = False  # counting needs no weights; never download
    cfg.freeze()
    model = build_model(cfg)
    total, trainable = count_parameters(model)
    size = eval_input_size(cfg)
    flops, activations, feature_dim = count_forward(model, size)
    return ModelInfo(meta_architecture=cfg.MODEL.META_ARCHITECTURE,
                     backbone=cfg.MODEL.BACKBONE.NAME, head=cfg.MODEL.HEADS.NAME,
                     parameters=total, trainable_parameters=trainable, flops=flops,
                     input_size=size, feature_dim=feature_dim, activations=activations)
