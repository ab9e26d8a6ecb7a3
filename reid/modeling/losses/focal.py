"""Focal loss on the classifier's logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.modeling.losses.build import LOSS_REGISTRY


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float,
               gamma: float) -> torch.Tensor:
    """Mean of -alpha (1 - p_t)^gamma log p_t over the batch (p_t: true-class probability)."""
    log_pt = F.log_softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return (-alpha * (1.0 - log_pt.exp()).pow(gamma) * log_pt).mean()


@LOSS_REGISTRY.register(name="FocalLoss")
class FocalLoss:
    def __init__(self, cfg) -> None:
        fl = cfg.MODEL.LOSSES.FL
        self.alpha, self.gamma, self.scale = fl.ALPHA, fl.GAMMA, fl.SCALE

    def __call__(self, outputs: dict, targets: torch.Tensor) -> dict:
        loss = focal_loss(outputs["cls_outputs"], targets, self.alpha, self.gamma)
        return {"loss_focal": loss * self.scale}
