"""Per-iteration learning-rate schedules: a warmup factor times a main schedule.

The scheduler is stepped once per iteration and computes every LR in closed form from the
iteration count, so a resumed run (which restores only the count) gets exactly the LRs an
uninterrupted run would have had. Epoch-based settings (SOLVER.STEPS, DELAY_EPOCHS,
MAX_EPOCH) are converted to iterations with ``iters_per_epoch``.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import LRScheduler

from reid.config import CfgNode
from reid.errors import ReidError
from reid.utils.registry import Registry

# name -> builder(solver_cfg, iters_per_epoch) -> schedule(base_lr, iteration) -> lr
SCHEDULE_REGISTRY = Registry("LR schedule (SOLVER.SCHED)")
# name -> warmup(iteration, warmup_iters, warmup_factor) -> multiplier in [factor, 1]
WARMUP_REGISTRY = Registry("warmup method (SOLVER.WARMUP_METHOD)")

Schedule = Callable[[float, int], float]


class MultiStepSchedule:
    """``base_lr * gamma ** (number of milestones reached)``; milestones in iterations."""

    def __init__(self, milestones: list[int], gamma: float) -> None:
        self.milestones = milestones
        self.gamma = gamma

    def __call__(self, base_lr: float, iteration: int) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, iteration)


class CosineSchedule:
    """Constant for ``delay`` iterations, then half a cosine from base_lr down to ``eta_min``
    at ``total`` iterations (and ``eta_min`` after that)."""

    def __init__(self, delay: int, total: int, eta_min: float) -> None:
        self.delay = delay
        self.total = total
        self.eta_min = eta_min

    def __call__(self, base_lr: float, iteration: int) -> float:
        if iteration < self.delay:
            return base_lr
        progress = min(1.0, (iteration - self.delay) / max(1, self.total - self.delay))
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2


@SCHEDULE_REGISTRY.register(name="MultiStepLR")
def build_multistep(solver: CfgNode, iters_per_epoch: int) -> Schedule:
    steps = list(solver.STEPS)
    if steps != sorted(steps):
        raise ReidError(f"SOLVER.STEPS must be increasing epochs, got {steps}")
    return MultiStepSchedule([int(epoch * iters_per_epoch) for epoch in steps], solver.GAMMA)


@SCHEDULE_REGISTRY.register(name="CosineAnnealingLR")
def build_cosine(solver: CfgNode, iters_per_epoch: int) -> Schedule:
    if solver.DELAY_EPOCHS >= solver.MAX_EPOCH:
        raise ReidError(f"SOLVER.DELAY_EPOCHS ({solver.DELAY_EPOCHS}) must be below "
                        f"SOLVER.MAX_EPOCH ({solver.MAX_EPOCH}) for CosineAnnealingLR")
    return CosineSchedule(delay=solver.DELAY_EPOCHS * iters_per_epoch,
                          total=solver.MAX_EPOCH * iters_per_epoch, eta_min=solver.ETA_MIN_LR)


@WARMUP_REGISTRY.register(name="linear")
def linear_warmup(iteration: int, warmup_iters: int, factor: float) -> float:
    if iteration >= warmup_iters:
        return 1.0
    alpha = iteration / warmup_iters
    return factor * (1 - alpha) + alpha


@WARMUP_REGISTRY.register(name="constant")
def constant_warmup(iteration: int, warmup_iters: int, factor: float) -> float:
    return factor if iteration < warmup_iters else 1.0


class WarmupLRScheduler(LRScheduler):
    """LR of each group = warmup(iteration) * schedule(group's base LR, iteration).

    ``last_epoch`` (torch's name) counts iterations here. The schedule and warmup functions
    are rebuilt from the config, so ``state_dict`` holds only numbers and loads with
    ``torch.load(weights_only=True)``.
    """

    _REBUILT = ("optimizer", "schedule", "warmup")

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 warmup: Callable[[int, int, float], float], warmup_iters: int,
                 warmup_factor: float, last_epoch: int = -1) -> None:
        self.schedule = schedule
        self.warmup = warmup
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        iteration = self.last_epoch
        factor = self.warmup(iteration, self.warmup_iters, self.warmup_factor)
        return [factor * self.schedule(base_lr, iteration) for base_lr in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in self._REBUILT}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in self._REBUILT})


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer,
                       iters_per_epoch: int) -> WarmupLRScheduler:
    """The SOLVER.SCHED schedule with SOLVER.WARMUP_* warmup, to be stepped every iteration."""
    if iters_per_epoch < 1:
        raise ReidError(f"an epoch needs at least one iteration (got iters_per_epoch="
                        f"{iters_per_epoch}); is the training set smaller than one batch?")
    solver = cfg.SOLVER
    schedule = SCHEDULE_REGISTRY.get(solver.SCHED)(solver, iters_per_epoch)
    warmup = WARMUP_REGISTRY.get(solver.WARMUP_METHOD)
    return WarmupLRScheduler(optimizer, schedule, warmup, warmup_iters=solver.WARMUP_ITERS,
                             warmup_factor=solver.WARMUP_FACTOR)
