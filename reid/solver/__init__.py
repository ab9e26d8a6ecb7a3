"""Optimizer parameter groups and per-iteration LR schedules built from SOLVER.*."""
from reid.solver.lr_scheduler import (SCHEDULE_REGISTRY, WARMUP_REGISTRY, WarmupLRScheduler,
                                      build_lr_scheduler)
from reid.solver.optimizer import OPTIMIZER_REGISTRY, build_optimizer, build_param_groups

__all__ = ["OPTIMIZER_REGISTRY", "SCHEDULE_REGISTRY", "WARMUP_REGISTRY", "WarmupLRScheduler",
           "build_lr_scheduler", "build_optimizer", "build_param_groups"]
