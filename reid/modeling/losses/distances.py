"""Pairwise distances and identity masks shared by the metric losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise euclidean distances (len(x) x len(y))."""
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.t()
    # clamp: rounding can make a zero distance slightly negative, and sqrt'(0) is infinite
    return sq.clamp(min=1e-12).sqrt()


def cosine_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise ``2 - 2 cos`` (len(x) x len(y)): the squared euclidean distance of the
    L2-normalised rows, FastReID's ``cosine_dist``."""
    return 2 - 2 * F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()


def identity_masks(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(same identity, different identity) boolean B x B masks; ``same`` includes the diagonal."""
    same = targets.unsqueeze(0) == targets.unsqueeze(1)
    return same, ~same
