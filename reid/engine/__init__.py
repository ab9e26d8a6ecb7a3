"""Training engine: the trainer loop with hooks, checkpoints, precise-BN, distributed launch."""
from reid.engine.checkpoint import Checkpointer, read_checkpoint
from reid.engine.defaults import build_hooks
from reid.engine.events import PeriodicWriter
from reid.engine.hooks import (HookBase, LayerFreezer, MetricsLogger, PeriodicCheckpointer,
                               PeriodicEvaluator, ProgressBar)
from reid.engine.launch import (destroy, init_distributed, resolve_device, seed_everything,
                                unwrap_model, wrap_ddp)
from reid.engine.precise_bn import update_bn_stats
from reid.engine.preemption import StopOnSignal
from reid.engine.train_hooks import IterationTimer, PreciseBN
from reid.engine.trainer import Trainer, TrainingDiverged

__all__ = ["Checkpointer", "HookBase", "IterationTimer", "LayerFreezer", "MetricsLogger",
           "PeriodicCheckpointer", "PeriodicEvaluator", "PeriodicWriter", "PreciseBN",
           "ProgressBar", "StopOnSignal", "Trainer", "TrainingDiverged", "build_hooks", "destroy",
           "init_distributed", "read_checkpoint", "resolve_device", "seed_everything",
           "unwrap_model", "update_bn_stats", "wrap_ddp"]
