"""Triplet loss with batch-hard or softmax-weighted mining over a P x K batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.modeling.losses.build import LOSS_REGISTRY
from reid.modeling.losses.distances import cosine_dist, euclidean_dist, identity_masks


def hard_example_mining(dist: torch.Tensor, is_pos: torch.Tensor,
                        is_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: the farthest positive and the closest negative."""
    dist_ap = dist.masked_fill(~is_pos, float("-inf")).max(dim=1).values
    dist_an = dist.masked_fill(~is_neg, float("inf")).min(dim=1).values
    return dist_ap, dist_an


def masked_softmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.softmax(values.masked_fill(~mask, float("-inf")), dim=1)


def weighted_example_mining(dist: torch.Tensor, is_pos: torch.Tensor,
                            is_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: positives weighted by softmax(distance), negatives by softmax(-distance).

    The weights are not detached: as in FastReID, the gradient also flows through them.
    """
    weights_ap = masked_softmax(dist, is_pos)
    weights_an = masked_softmax(-dist, is_neg)
    return (dist * weights_ap).sum(dim=1), (dist * weights_an).sum(dim=1)


def triplet_loss(embedding: torch.Tensor, targets: torch.Tensor, margin: float,
                 norm_feat: bool, hard_mining: bool) -> torch.Tensor:
    """Mean triplet loss on euclidean distances, or with ``norm_feat`` on FastReID 1.4's cosine
    distance ``2 - 2 cos`` (the squared euclidean distance of the unit-length features).

    ``margin`` > 0: max(0, d_ap - d_an + margin); ``margin`` == 0: the soft margin
    log(1 + exp(d_ap - d_an)). Anchors with no negative in the batch are skipped.
    """
    if norm_feat:
        dist = cosine_dist(embedding, embedding)
    else:
        dist = euclidean_dist(embedding, embedding)
    is_pos, is_neg = identity_masks(targets)
    has_neg = is_neg.any(dim=1)
    if not has_neg.any():
        return dist.sum() * 0.0  # one identity in the batch: nothing to separate
    dist, is_pos, is_neg = dist[has_neg], is_pos[has_neg], is_neg[has_neg]
    mine = hard_example_mining if hard_mining else weighted_example_mining
    dist_ap, dist_an = mine(dist, is_pos, is_neg)
    if margin > 0:
        return F.relu(dist_ap - dist_an + margin).mean()
    return F.softplus(dist_ap - dist_an).mean()


@LOSS_REGISTRY.register(name="TripletLoss")
class TripletLoss:
    def __init__(self, cfg) -> None:
        tri = cfg.MODEL.LOSSES.TRI
        self.margin, self.norm_feat, self.hard_mining = tri.MARGIN, tri.NORM_FEAT, tri.HARD_MINING
        self.scale = tri.SCALE

    def __call__(self, outputs: dict, targets: torch.Tensor) -> dict:
        loss = triplet_loss(outputs["features"], targets, self.margin, self.norm_feat,
                            self.hard_mining)
        return {"loss_triplet": loss * self.scale}
