"""Normalisation layers named by MODEL.BACKBONE.NORM / MODEL.HEADS.NORM (FastReID's names).

``get_norm(name, channels)`` builds one: "BN", "syncBN", "GhostBN", "FrozenBN" or "GN".

"syncBN" builds a plain BatchNorm2d: synchronised batch norm only exists across processes, so
the engine converts the model with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` when it
runs under DDP and ``wants_sync_bn(cfg)`` is true. A single-process (CPU) run keeps plain BN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ReidError
from reid.utils.registry import Registry

NORM_REGISTRY = Registry("normalisation layer")

SYNC_BN_NAMES = ("syncBN", "SyncBN")
# FastReID's GroupNorm always uses 32 groups
GN_GROUPS = 32


class GhostBatchNorm(nn.BatchNorm2d):
    """Ghost batch norm: in training, each of ``num_splits`` virtual batches is normalised with
    its own statistics; in eval it is plain BatchNorm with the running statistics.

    As in FastReID, virtual batch ``j`` holds the samples ``j, j + s, j + 2s, ...`` (s =
    num_splits; FastReID reshapes N x C to N/s x (s C)), and the running statistics move towards
    the mean of the per-split statistics. State-dict keys are BatchNorm2d's.
    """

    def __init__(self, num_features: int, num_splits: int = 1, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if num_splits < 1:
            raise ReidError(f"GhostBN needs num_splits >= 1; got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        if n % s:
            raise ReidError(f"GhostBN with {s} splits needs a batch size divisible by {s}; "
                            f"got {n}")
        factor = self._average_factor()
        running_mean = running_var = None
        if self.track_running_stats:
            running_mean, running_var = self.running_mean.repeat(s), self.running_var.repeat(s)
        weight = None if self.weight is None else self.weight.repeat(s)
        bias = None if self.bias is None else self.bias.repeat(s)
        out = F.batch_norm(x.reshape(n // s, s * c, h, w), running_mean, running_var, weight,
                           bias, True, factor, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(s, c).mean(0))
                self.running_var.copy_(running_var.view(s, c).mean(0))
        return out.reshape(n, c, h, w)

    def _average_factor(self) -> float:
        """BatchNorm's update factor: ``momentum``, or 1 / batches seen when it is None (the
        cumulative average precise-BN relies on)."""
        if not self.track_running_stats:
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum


class FrozenBatchNorm(nn.Module):
    """BatchNorm2d with fixed affine parameters and statistics:
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    All four are buffers (no parameters, no gradient, never updated) under BatchNorm2d's names,
    so a BN checkpoint loads by name; BN's ``num_batches_tracked`` is accepted and ignored. A
    checkpoint with only ``weight`` and ``bias`` (Caffe2 style) gets identity statistics.
    It is deliberately not a ``_BatchNorm``: SyncBN conversion, precise-BN and the norm weight
    decay group must leave it alone.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # 1 - eps: the initial layer is exactly the identity
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        if prefix + "weight" in state_dict:
            state_dict.setdefault(prefix + "running_mean", torch.zeros_like(self.running_mean))
            state_dict.setdefault(prefix + "running_var",
                                  torch.ones_like(self.running_var) - self.eps)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def batch_norm(channels: int, num_splits: int = 1) -> nn.Module:
    return nn.BatchNorm2d(channels)


def ghost_batch_norm(channels: int, num_splits: int = 1) -> nn.Module:
    return GhostBatchNorm(channels, num_splits)


def frozen_batch_norm(channels: int, num_splits: int = 1) -> nn.Module:
    return FrozenBatchNorm(channels)


def group_norm(channels: int, num_splits: int = 1) -> nn.Module:
    if channels % GN_GROUPS:
        raise ReidError(f"norm 'GN' uses {GN_GROUPS} groups and needs a channel count divisible "
                        f"by {GN_GROUPS}; got {channels} channels")
    return nn.GroupNorm(GN_GROUPS, channels)


NORM_REGISTRY.register(batch_norm, name="BN")
NORM_REGISTRY.register(batch_norm, name="syncBN", aliases=("SyncBN",))
NORM_REGISTRY.register(ghost_batch_norm, name="GhostBN")
NORM_REGISTRY.register(frozen_batch_norm, name="FrozenBN")
NORM_REGISTRY.register(group_norm, name="GN")


def get_norm(name: str, channels: int, num_splits: int = 1) -> nn.Module:
    """A 2-d normalisation layer over ``channels`` channels; ``num_splits`` only matters for
    "GhostBN" (FastReID's default is 1, which makes it plain BN)."""
    return NORM_REGISTRY.get(name)(channels, num_splits)


def wants_sync_bn(cfg) -> bool:
    """Whether the config asks for synchronised BN (the engine converts under DDP)."""
    return cfg.MODEL.BACKBONE.NORM in SYNC_BN_NAMES or cfg.MODEL.HEADS.NORM in SYNC_BN_NAMES
