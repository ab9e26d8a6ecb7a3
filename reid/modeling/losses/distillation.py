"""Logit distillation losses (KD.LOSS): student vs teacher class distributions at temperature T."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reid.utils.registry import Registry

KD_LOSS_REGISTRY = Registry("distillation loss (KD.LOSS)")


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(p || q) from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


@KD_LOSS_REGISTRY.register(name="kl")
def kl_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) x T^2 (T^2 keeps gradients comparable across temperatures)."""
    t = temperature
    log_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    log_student = F.log_softmax(student_logits / t, dim=1)
    return kl_divergence(log_teacher, log_student) * t * t


@KD_LOSS_REGISTRY.register(name="js")
def js_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Jensen-Shannon divergence between teacher_T and student_T, x T^2."""
    t = temperature
    log_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_mixture = torch.logaddexp(log_teacher, log_student) - math.log(2.0)
    js = kl_divergence(log_teacher, log_mixture) + kl_divergence(log_student, log_mixture)
    return 0.5 * js * t * t


def distillation_loss(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    return KD_LOSS_REGISTRY.get(name)(student_logits, teacher_logits, temperature)


# --------------------------------------------------------------------------- feature "overhaul"
# FastReID's normaliser of the summed partial L2 (per image); KD.OVERHAUL_SCALE 1 = its weight
OVERHAUL_NORMALISER = 10000.0
# below this probability of a negative response, the margin falls back to -3 std (Heo et al.)
MIN_NEGATIVE_PROBABILITY = 1e-3


def bn_margins(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-channel margins of overhaul distillation from the BN before the teacher's ReLU.

    A channel's pre-ReLU response is taken as Gaussian with the BN's affine bias as mean and
    its |weight| as std; the margin is the expected value of its negative part,
    ``E[x | x < 0] = m - s * pdf(m/s) / cdf(-m/s)``, or ``-3 s`` when a negative response is
    rarer than 0.1 %. Computed in float64 (the ratio of two small tails), returned in
    ``weight``'s dtype.
    """
    std = weight.detach().double().abs()
    mean = bias.detach().double()
    z = mean / std
    negative = torch.special.ndtr(-z)  # P(x < 0)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    truncated_mean = mean - std * pdf / negative
    margins = torch.where(negative > MIN_NEGATIVE_PROBABILITY, truncated_mean, -3.0 * std)
    return margins.to(weight.dtype)


def overhaul_distillation(student: torch.Tensor, teacher: torch.Tensor,
                          margins: torch.Tensor) -> torch.Tensor:
    """Partial L2 between pre-ReLU maps (B x C x h x w), Heo et al. (ICCV 2019).

    The teacher's responses are raised to at least the channel's margin; a position counts
    unless the student is already below a non-positive target there (the ReLU would
    discard both). Summed, divided by the batch size and ``OVERHAUL_NORMALISER`` (FastReID).
    Computed in float32: under AMP a float16 sum over a whole feature map overflows.
    """
    student = student.float()
    target = torch.max(teacher.detach().float(), margins.view(1, -1, 1, 1).float())
    counted = (student > target) | (target > 0)
    squared = (student - target).pow(2) * counted
    return squared.sum() / student.shape[0] / OVERHAUL_NORMALISER
