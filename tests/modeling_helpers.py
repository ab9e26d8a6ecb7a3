"""Helpers shared by the modeling tests: configs, parameter counts, batches, hand-computed KD."""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torch import nn

from reid.config import get_cfg
from reid.errors import ReidError, one_line


def backbone_cfg(**backbone):
    """The default config with these MODEL.BACKBONE keys; PRETRAIN off (tests load no weights
    unless they say so)."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.update(backbone)
    return cfg


def error_message(build: Callable, *args) -> str:
    """The message of the ReidError ``build(*args)`` raises, checked to be the single line the
    command line prints."""
    with pytest.raises(ReidError) as err:
        build(*args)
    message = str(err.value)
    assert one_line(err.value) == message
    return message


def num_params(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Parameter count, leaving out parameters whose names start with ``skip``."""
    return sum(p.numel() for name, p in module.named_parameters() if not name.startswith(skip))


def identity_batch(num_ids: int, per_id: int = 2, height: int = 64, seed: int = 0) -> dict:
    """A training batch as the loader delivers it: ``per_id`` random 0..255 images (height x 32)
    of each identity 0..num_ids-1, identities in order."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_ids).repeat_interleave(per_id)
    return {"images": torch.rand(len(targets), 3, height, 32, generator=g) * 255,
            "targets": targets}


def softmax_rows(logits: torch.Tensor, t: float) -> list[list[float]]:
    """softmax(logits / t) of each row, with math only."""
    rows = []
    for row in logits.tolist():
        exps = [math.exp(v / t) for v in row]
        rows.append([v / sum(exps) for v in exps])
    return rows


def kl_rows(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """KL(teacher || student) of the softened rows, batch mean, times t^2 (Hinton's KD)."""
    pairs = zip(softmax_rows(teacher, t), softmax_rows(student, t))
    return sum(kl_rows(p, q) for p, q in pairs) / len(student) * t * t


def hand_js(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """Jensen-Shannon divergence of the softened rows, batch mean, times t^2."""
    total = 0.0
    for p, q in zip(softmax_rows(teacher, t), softmax_rows(student, t)):
        m = [(a + b) / 2 for a, b in zip(p, q)]
        total += 0.5 * kl_rows(p, m) + 0.5 * kl_rows(q, m)
    return total / len(student) * t * t
