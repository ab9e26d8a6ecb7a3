"""Cross-entropy with (adaptive) label smoothing on the classifier's logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.modeling.losses.build import LOSS_REGISTRY


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor, epsilon: float,
                       alpha: float = 0.2) -> torch.Tensor:
    """Mean cross-entropy against smoothed labels.

    The true class gets 1 - eps and every other class eps / (C - 1). With ``epsilon`` -1
    the smoothing is adaptive: eps = alpha x the predicted probability of the true class
    (detached, so it acts as a label, not a loss term).
    """
    num_classes = logits.shape[1]
    log_probs = F.log_softmax(logits, dim=1)
    if epsilon >= 0:
        eps = torch.full_like(logits[:, :1], float(epsilon))
    else:
        eps = alpha * log_probs.detach().exp().gather(1, targets.unsqueeze(1))
    labels = (eps / max(num_classes - 1, 1)).expand_as(logits).clone()
    labels.scatter_(1, targets.unsqueeze(1), 1.0 - eps)
    return -(labels * log_probs).sum(dim=1).mean()


@LOSS_REGISTRY.register(name="CrossEntropyLoss")
class CrossEntropyLoss:
    def __init__(self, cfg) -> None:
        ce = cfg.MODEL.LOSSES.CE
        self.epsilon, self.alpha, self.scale = ce.EPSILON, ce.ALPHA, ce.SCALE

    def __call__(self, outputs: dict, targets: torch.Tensor) -> dict:
        loss = cross_entropy_loss(outputs["cls_outputs"], targets, self.epsilon, self.alpha)
        return {"loss_cls": loss * self.scale}
