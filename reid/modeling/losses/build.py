"""The loss registry and ``build_losses(cfg)``.

A loss is built from the config and called as ``loss(outputs, targets) -> {"loss_x": tensor}``
where ``outputs`` is the head's training dict (``cls_outputs``, ``pred_class_logits``,
``features``) and the tensor already carries the loss's SCALE.
"""
from __future__ import annotations

from typing import Callable

import torch

from reid.errors import ReidError
from reid.utils.registry import Registry

LOSS_REGISTRY = Registry("loss")

LossFn = Callable[[dict, torch.Tensor], dict]


def build_losses(cfg) -> list[LossFn]:
    names = list(cfg.MODEL.LOSSES.NAME)
    if not names:
        raise ReidError("MODEL.LOSSES.NAME is empty; name at least one loss, "
                        "e.g. ('CrossEntropyLoss', 'TripletLoss')")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ReidError(f"MODEL.LOSSES.NAME lists {', '.join(duplicates)} more than once")
    return [LOSS_REGISTRY.get(name)(cfg) for name in names]
