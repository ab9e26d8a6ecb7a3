"""Independent reference computations shared by several test modules (this module holds no
tests): what the library's result must equal, computed another way (PIL instead of torchvision,
plain ``math`` loops instead of tensors). A reference only one test module uses stays beside its
tests; toy inputs are in ``toys.py``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

# ------------------------------------------------------------------ images


def bicubic_chw(img: Image.Image, height: int, width: int) -> torch.Tensor:
    """Independent reference of the resize: PIL bicubic, HWC -> CHW, float, unscaled 0..255."""
    arr = np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)


# ------------------------------------------------------------------ knowledge distillation

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


# ------------------------------------------------------------------ retrieval
def reid_distances(queries: np.ndarray, gallery: np.ndarray, metric: str) -> np.ndarray:
    """Reid's distances written out in float64: cosine ``1 - cos``, euclidean squared L2."""
    q, g = queries.astype(np.float64), gallery.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1.0 - q @ g.T
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
