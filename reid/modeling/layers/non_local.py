"""Non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018), dot-product form.

Every position attends to every other one: ``y_i = 1/N * sum_j (theta_i . phi_j) g_j`` over the
N = H * W positions, then ``z = W(y) + x``. Module names ``g``, ``theta``, ``phi`` and ``W`` (a
1x1 conv followed by a norm layer, ``W.0`` / ``W.1``) follow FastReID, so its checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn

from reid.modeling.layers.norm import get_norm


class NonLocal(nn.Module):
    def __init__(self, channels: int, norm: str = "BN", inter_channels: int = 1) -> None:
        super().__init__()
        # FastReID 1.4 computes its inner width as ``reduc_ratio // reduc_ratio``, i.e. 1 (the
        # paper uses channels / 2). The default follows FastReID, so that its AGW and SBS
        # checkpoints load with the same shapes and features; pass channels // 2 for the paper's.
        self.inter_channels = inter_channels
        self.g = nn.Conv2d(channels, self.inter_channels, kernel_size=1)
        self.theta = nn.Conv2d(channels, self.inter_channels, kernel_size=1)
        self.phi = nn.Conv2d(channels, self.inter_channels, kernel_size=1)
        self.W = nn.Sequential(  # noqa: N815 - FastReID's name
            nn.Conv2d(self.inter_channels, channels, kernel_size=1),
            get_norm(norm, channels),
        )
        # a zero-scaled output norm makes the new block an identity at first, so inserting it
        # into a pretrained network does not disturb that network's features
        zero_affine(self.W[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        g = self.g(x).flatten(2).transpose(1, 2)            # B x N x C'
        theta = self.theta(x).flatten(2).transpose(1, 2)    # B x N x C'
        phi = self.phi(x).flatten(2)                        # B x C' x N
        affinity = torch.bmm(theta, phi) / phi.shape[-1]    # B x N x N, scaled by 1/N
        y = torch.bmm(affinity, g).transpose(1, 2)          # B x C' x N
        y = y.reshape(batch, self.inter_channels, height, width)
        return self.W(y) + x


def zero_affine(norm: nn.Module) -> None:
    """Set a norm layer's scale and shift (parameters or buffers, whichever it has) to zero."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            tensor = getattr(norm, name, None)
            if isinstance(tensor, torch.Tensor):
                tensor.zero_()
