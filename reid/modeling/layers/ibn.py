"""IBN-a normalisation: instance norm on the first half of the channels, batch norm on the rest.

Instance norm removes per-image appearance (colour, contrast, style) which helps re-id across
cameras and domains; the batch-normalised half keeps content-discriminative statistics
(Pan et al., "Two at Once", ECCV 2018). Children are named ``IN`` and ``BN`` as in IBN-Net and
FastReID, so ``bn1.IN.weight`` / ``bn1.BN.running_mean`` of their weight files load by name.
"""
from __future__ import annotations

import torch
from torch import nn

from reid.modeling.layers.norm import get_norm


class IBN(nn.Module):
    """InstanceNorm (affine) on the first ``channels // 2`` channels, ``norm`` on the rest."""

    def __init__(self, channels: int, norm: str = "BN") -> None:
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)  # noqa: N815 - FastReID's name
        self.BN = get_norm(norm, channels - self.half)  # noqa: N815 - FastReID's name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.IN(x[:, :self.half].contiguous()),
                          self.BN(x[:, self.half:].contiguous())), dim=1)
