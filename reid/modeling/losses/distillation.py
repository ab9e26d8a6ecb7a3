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
