"""Pairwise losses on cosine similarities of all pairs in the batch: circle loss and CosFace.

Both have the form softplus(logsumexp over positives + logsumexp over negatives), per anchor,
averaged; the anchor itself is not one of its positives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.modeling.losses.build import LOSS_REGISTRY
from reid.modeling.losses.distances import identity_masks

# a finite "minus infinity": logsumexp over an all-masked row must keep finite gradients
MASKED = -1e9


def pair_similarities(embedding: torch.Tensor, targets: torch.Tensor):
    """(cosine B x B, positive mask without the diagonal, negative mask)."""
    normed = F.normalize(embedding, dim=1)
    sim = normed @ normed.t()
    is_pos, is_neg = identity_masks(targets)
    is_pos = is_pos & ~torch.eye(len(targets), dtype=torch.bool, device=targets.device)
    return sim, is_pos, is_neg


def pair_loss(logit_p: torch.Tensor, logit_n: torch.Tensor, is_pos: torch.Tensor,
              is_neg: torch.Tensor) -> torch.Tensor:
    lse_p = torch.logsumexp(logit_p.masked_fill(~is_pos, MASKED), dim=1)
    lse_n = torch.logsumexp(logit_n.masked_fill(~is_neg, MASKED), dim=1)
    return F.softplus(lse_p + lse_n).mean()


def pairwise_circle_loss(embedding: torch.Tensor, targets: torch.Tensor, margin: float,
                         gamma: float) -> torch.Tensor:
    sim, is_pos, is_neg = pair_similarities(embedding, targets)
    # self-paced weights, constants for the gradient as in the circle loss paper
    alpha_p = (1.0 + margin - sim.detach()).clamp(min=0.0)
    alpha_n = (sim.detach() + margin).clamp(min=0.0)
    logit_p = -gamma * alpha_p * (sim - (1.0 - margin))
    logit_n = gamma * alpha_n * (sim - margin)
    return pair_loss(logit_p, logit_n, is_pos, is_neg)


def pairwise_cosface_loss(embedding: torch.Tensor, targets: torch.Tensor, margin: float,
                          gamma: float) -> torch.Tensor:
    sim, is_pos, is_neg = pair_similarities(embedding, targets)
    return pair_loss(-gamma * sim, gamma * (sim + margin), is_pos, is_neg)


@LOSS_REGISTRY.register(name="CircleLoss")
class CircleLoss:
    def __init__(self, cfg) -> None:
        c = cfg.MODEL.LOSSES.CIRCLE
        self.margin, self.gamma, self.scale = c.MARGIN, c.GAMMA, c.SCALE

    def __call__(self, outputs: dict, targets: torch.Tensor) -> dict:
        loss = pairwise_circle_loss(outputs["features"], targets, self.margin, self.gamma)
        return {"loss_circle": loss * self.scale}


@LOSS_REGISTRY.register(name="Cosface")
class CosfaceLoss:
    def __init__(self, cfg) -> None:
        c = cfg.MODEL.LOSSES.COSFACE
        self.margin, self.gamma, self.scale = c.MARGIN, c.GAMMA, c.SCALE

    def __call__(self, outputs: dict, targets: torch.Tensor) -> dict:
        loss = pairwise_cosface_loss(outputs["features"], targets, self.margin, self.gamma)
        return {"loss_cosface": loss * self.scale}
