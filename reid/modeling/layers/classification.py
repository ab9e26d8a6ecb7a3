"""Classification layers (MODEL.HEADS.CLS_LAYER): turn neck features into class logits.

A layer has two steps so the head can report logits with and without the margin:
``similarities(feats, weight)`` (plain dot products, or cosines for the margin layers) and
``forward(similarities, targets)`` (the training logits, margin applied to the true class).
``plain_logits(similarities)`` gives the logits without margin, scaled like the training ones,
which accuracy and distillation use.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reid.utils.registry import Registry

CLS_LAYER_REGISTRY = Registry("classification layer")


@CLS_LAYER_REGISTRY.register(name="linear", aliases=("Linear",))
class LinearLayer(nn.Module):
    """Plain logits ``feats @ weight.T``; SCALE and MARGIN do not apply."""

    def __init__(self, scale: float = 1.0, margin: float = 0.0) -> None:
        super().__init__()

    def similarities(self, feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(feats, weight)

    def plain_logits(self, sims: torch.Tensor) -> torch.Tensor:
        return sims

    def forward(self, sims: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sims


class CosineMarginLayer(nn.Module):
    """Base of the margin layers: cosine logits, a margin on the true class, times SCALE."""

    def __init__(self, scale: float, margin: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.margin = float(margin)

    def similarities(self, feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(feats, dim=1), F.normalize(weight, dim=1))

    def plain_logits(self, sims: torch.Tensor) -> torch.Tensor:
        return sims * self.scale

    def forward(self, sims: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        true_class = F.one_hot(targets, sims.shape[1]).bool()
        return self.with_margin(sims, true_class) * self.scale

    def with_margin(self, cos: torch.Tensor, true_class: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@CLS_LAYER_REGISTRY.register(name="cosSoftmax", aliases=("CosSoftmax",))
class CosSoftmax(CosineMarginLayer):
    """CosFace / AM-softmax: cos - m on the true class."""

    def with_margin(self, cos: torch.Tensor, true_class: torch.Tensor) -> torch.Tensor:
        return torch.where(true_class, cos - self.margin, cos)


@CLS_LAYER_REGISTRY.register(name="arcSoftmax", aliases=("ArcSoftmax",))
class ArcSoftmax(CosineMarginLayer):
    """ArcFace: cos(theta + m) on the true class.

    Past theta = pi - m, cos(theta + m) would increase again with theta; there the logit
    continues as cos(theta) - m sin(m), which stays monotonic (ArcFace's usual fallback).
    """

    def with_margin(self, cos: torch.Tensor, true_class: torch.Tensor) -> torch.Tensor:
        m = self.margin
        # clamp below 1: the gradient of sqrt(1 - cos^2) is infinite at |cos| = 1
        sin = (1.0 - cos.pow(2)).clamp(min=1e-12).sqrt()
        cos_plus_m = cos * math.cos(m) - sin * math.sin(m)
        fallback = cos - m * math.sin(m)
        target_logit = torch.where(cos > math.cos(math.pi - m), cos_plus_m, fallback)
        return torch.where(true_class, target_logit, cos)


@CLS_LAYER_REGISTRY.register(name="circleSoftmax", aliases=("CircleSoftmax",))
class CircleSoftmax(CosineMarginLayer):
    """Circle loss as a classifier: self-paced weights and margins on the cosines."""

    def with_margin(self, cos: torch.Tensor, true_class: torch.Tensor) -> torch.Tensor:
        m = self.margin
        # the weights are treated as constants (detached), as in the circle loss paper
        alpha_p = (1.0 + m - cos.detach()).clamp(min=0.0)
        alpha_n = (cos.detach() + m).clamp(min=0.0)
        positive = alpha_p * (cos - (1.0 - m))
        negative = alpha_n * (cos - m)
        return torch.where(true_class, positive, negative)


def build_cls_layer(name: str, scale: float, margin: float) -> nn.Module:
    return CLS_LAYER_REGISTRY.get(name)(scale=scale, margin=margin)
