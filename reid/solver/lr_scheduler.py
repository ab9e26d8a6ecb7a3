"""Learning-rate schedules as FastReID 1.4 runs them: a per-iteration warm-up, then a main
schedule counted in epochs from the end of the warm-up.

FastReID 1.4 has two schedulers: the warm-up one steps after every iteration while
``iteration + 1 <= WARMUP_ITERS``; the main one (``SOLVER.SCHED``) steps after every epoch, but
only once the warm-up is over and the epoch is past ``DELAY_EPOCHS``. So the main schedule's
epochs count from the first epoch that ends after the warm-up: with 100 warm-up iterations
and 18 iterations per epoch, ``STEPS: [20, 27]`` decays the LR at epochs 25 and 32, not 20 and
27; a cosine spans ``MAX_EPOCH - max(ceil(WARMUP_ITERS / iters_per_epoch), DELAY_EPOCHS)``
epochs. The warm-up factor never multiplies a decayed LR.

Here one scheduler is stepped once per iteration and computes every LR in closed form from the
iteration count (``main_steps``: how many times FastReID's main scheduler has stepped before
that iteration), so a resumed run, which restores only the count, gets exactly the LRs an
uninterrupted run would have had.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import LRScheduler

from reid.config.node import CfgNode
from reid.errors import ReidError
from reid.utils.registry import Registry

# name -> builder(solver_cfg, iters_per_epoch) -> schedule(base_lr, iteration) -> lr
SCHEDULE_REGISTRY = Registry("LR schedule (SOLVER.SCHED)")
# name -> warmup(iteration, warmup_iters, warmup_factor) -> multiplier in [factor, 1]
WARMUP_REGISTRY = Registry("warmup method (SOLVER.WARMUP_METHOD)")

Schedule = Callable[[float, int], float]


def warmup_epochs(solver: CfgNode, iters_per_epoch: int) -> int:
    """Epochs (whole or begun) that the warm-up spans: ``ceil(WARMUP_ITERS / iters_per_epoch)``."""
    return math.ceil(solver.WARMUP_ITERS / iters_per_epoch)


class MainSteps:
    """How many times FastReID's per-epoch main scheduler has stepped before ``iteration``.

    It steps at the end of epoch ``e`` (0-based) when ``(e + 1) * iters_per_epoch >=
    WARMUP_ITERS`` and ``e + 1 > DELAY_EPOCHS``, i.e. from epoch
    ``max(ceil(WARMUP_ITERS / iters_per_epoch) - 1, DELAY_EPOCHS)`` on.
    """

    def __init__(self, iters_per_epoch: int, first_epoch: int) -> None:
        self.iters_per_epoch = iters_per_epoch
        self.first_epoch = first_epoch

    @classmethod
    def from_solver(cls, solver: CfgNode, iters_per_epoch: int) -> "MainSteps":
        first = max(warmup_epochs(solver, iters_per_epoch) - 1, solver.DELAY_EPOCHS)
        return cls(iters_per_epoch, first)

    def __call__(self, iteration: int) -> int:
        return max(0, iteration // self.iters_per_epoch - self.first_epoch)


class MultiStepSchedule:
    """``base_lr * gamma ** (number of milestones reached)``; a milestone ``m`` (epochs of the
    main schedule) is reached once the main scheduler has stepped ``m`` times (``m`` >= 1, as
    torch's MultiStepLR: a milestone 0 is never reached)."""

    def __init__(self, milestones: list[int], gamma: float, steps: Callable[[int], int]) -> None:
        self.milestones = milestones
        self.gamma = gamma
        self.steps = steps

    def __call__(self, base_lr: float, iteration: int) -> float:
        done = self.steps(iteration)
        return base_lr * self.gamma ** sum(1 for m in self.milestones if 0 < m <= done)


class CosineSchedule:
    """Half a cosine from base_lr down to ``eta_min`` over ``t_max`` steps of the main
    schedule (torch's CosineAnnealingLR in closed form), constant before its first step."""

    def __init__(self, t_max: int, eta_min: float, steps: Callable[[int], int]) -> None:
        self.t_max = t_max
        self.eta_min = eta_min
        self.steps = steps

    def __call__(self, base_lr: float, iteration: int) -> float:
        progress = min(1.0, self.steps(iteration) / self.t_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2


@SCHEDULE_REGISTRY.register(name="MultiStepLR")
def build_multistep(solver: CfgNode, iters_per_epoch: int) -> Schedule:
    steps = list(solver.STEPS)
    if steps != sorted(steps):
        raise ReidError(f"SOLVER.STEPS must be increasing epochs, got {steps}")
    return MultiStepSchedule([int(epoch) for epoch in steps], solver.GAMMA,
                             MainSteps.from_solver(solver, iters_per_epoch))


@SCHEDULE_REGISTRY.register(name="CosineAnnealingLR")
def build_cosine(solver: CfgNode, iters_per_epoch: int) -> Schedule:
    if solver.DELAY_EPOCHS >= solver.MAX_EPOCH:
        raise ReidError(f"SOLVER.DELAY_EPOCHS ({solver.DELAY_EPOCHS}) must be below "
                        f"SOLVER.MAX_EPOCH ({solver.MAX_EPOCH}) for CosineAnnealingLR")
    t_max = solver.MAX_EPOCH - max(warmup_epochs(solver, iters_per_epoch), solver.DELAY_EPOCHS)
    if t_max < 1:
        raise ReidError(f"SOLVER.WARMUP_ITERS ({solver.WARMUP_ITERS}, "
                        f"{warmup_epochs(solver, iters_per_epoch)} epochs of {iters_per_epoch} "
                        f"iterations) leaves no epoch of SOLVER.MAX_EPOCH ({solver.MAX_EPOCH}) "
                        f"for CosineAnnealingLR")
    return CosineSchedule(t_max, solver.ETA_MIN_LR, MainSteps.from_solver(solver, iters_per_epoch))


@WARMUP_REGISTRY.register(name="linear")
def linear_warmup(iteration: int, warmup_iters: int, factor: float) -> float:
    if iteration >= warmup_iters:
        return 1.0
    alpha = iteration / warmup_iters
    return factor * (1 - alpha) + alpha


@WARMUP_REGISTRY.register(name="constant")
def constant_warmup(iteration: int, warmup_iters: int, factor: float) -> float:
    return factor if iteration < warmup_iters else 1.0


@WARMUP_REGISTRY.register(name="exp")
def exp_warmup(iteration: int, warmup_iters: int, factor: float) -> float:
    """``factor ** (1 - iteration / warmup_iters)``: geometric from ``factor`` up to 1."""
    if iteration >= warmup_iters:
        return 1.0
    return factor ** (1 - iteration / warmup_iters)


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
