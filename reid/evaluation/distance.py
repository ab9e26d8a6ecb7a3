"""Query x gallery distance matrices (smaller = more similar), computed with torch.

Numbers match FastReID: "cosine" is ``1 - cos`` of L2-normalised features and "euclidean" is
the SQUARED Euclidean distance (a monotone map of the true distance, so ranks are the same and
the square root is not worth its cost).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from reid.errors import ReidError
from reid.utils.registry import Registry

DISTANCE_METRICS = Registry("distance metric")

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@DISTANCE_METRICS.register(name="cosine")
def cosine_distance(q_feats: torch.Tensor, g_feats: torch.Tensor) -> torch.Tensor:
    q = F.normalize(q_feats, p=2, dim=1)
    g = F.normalize(g_feats, p=2, dim=1)
    return 1.0 - q @ g.t()


@DISTANCE_METRICS.register(name="euclidean")
def squared_euclidean_distance(q_feats: torch.Tensor, g_feats: torch.Tensor) -> torch.Tensor:
    # |q|^2 + |g|^2 - 2 q.g, one matrix product instead of a Q x G x D difference tensor.
    q_sq = q_feats.pow(2).sum(dim=1, keepdim=True)
    g_sq = g_feats.pow(2).sum(dim=1, keepdim=True).t()
    dist = torch.addmm(q_sq + g_sq, q_feats, g_feats.t(), beta=1.0, alpha=-2.0)
    # Rounding can make a zero distance slightly negative.
    return dist.clamp_(min=0.0)


def compute_distance(q_feats: torch.Tensor, g_feats: torch.Tensor,
                     metric: str = "cosine") -> np.ndarray:
    """The ``Q x G`` float32 distance matrix between query and gallery features."""
    distance: DistanceFn = DISTANCE_METRICS.get(metric)
    q_feats = torch.as_tensor(q_feats).float()
    g_feats = torch.as_tensor(g_feats).float()
    if q_feats.ndim != 2 or g_feats.ndim != 2 or q_feats.shape[1] != g_feats.shape[1]:
        raise ReidError(f"compute_distance expects N x D query and gallery features of the same D, "
                        f"got {tuple(q_feats.shape)} and {tuple(g_feats.shape)}")
    g_feats = g_feats.to(q_feats.device)
    with torch.no_grad():
        dist = distance(q_feats, g_feats)
    return dist.cpu().numpy().astype(np.float32, copy=False)
