"""The hooks of a training, as FastReID's ``DefaultTrainer.build_hooks`` assembles them.

A user adds hooks without editing ``reid/stages.py``: ``stages.train(cfg, hooks=[...])`` in
Python, or ``HOOKS: ["my_package.hooks:MyHook"]`` in the config (imported and built here).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Iterable, Optional

from torch import nn

from reid.engine.events import METRICS_FILE, MetricsFile, MetricsPrinter, PeriodicWriter, fan_out
from reid.engine.hook_base import HookBase, MetricsSink
from reid.engine.hooks import (IterationTimer, LayerFreezer, PeriodicCheckpointer,
                               PeriodicEvaluator, PreciseBN, ProgressBar)
from reid.engine.preemption import StopOnSignal
from reid.errors import ReidError
from reid.modeling import classifier_weight_names
from reid.utils.events import TensorboardXWriter


def hook_from_name(name: str, cfg: Any) -> HookBase:
    """The hook named ``"module:Class"`` (an entry of HOOKS), built with ``cfg`` when its
    ``__init__`` takes an argument, else with none."""
    module_name, _, class_name = name.partition(":")
    try:
        if not class_name:
            raise ImportError("no :Class after the module")
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ReidError(f"HOOKS entry {name!r} must name an importable hook class as "
                        f"module:Class ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, HookBase)):
        raise ReidError(f"HOOKS entry {name!r} must name a subclass of "
                        "reid.engine.hooks.HookBase as module:Class")
    required = [p for p in inspect.signature(cls).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return cls(cfg) if required else cls()


def build_hooks(cfg: Any, model: nn.Module, checkpointer: Any, evaluate: Callable[[], dict],
                precise_bn_images: Callable[[], Iterable], sink: Optional[MetricsSink] = None,
                extra_hooks: Iterable[HookBase] = ()) -> list[HookBase]:
    """The training hooks of ``cfg``, in the order they run.

    ``model`` is the unwrapped model, ``checkpointer`` writes to OUTPUT_DIR, ``evaluate()``
    returns ``{test set: {metric: value}}``, ``precise_bn_images()`` the batches of
    TEST.PRECISE_BN.DATASET, ``sink`` the tracker's ``sink(metrics, step)``. The hooks of
    ``extra_hooks`` and then of HOOKS run after the built-in ones of each stage but before the
    periodic writer (what they put in the storage is in the step's report) and the
    checkpointer (their state is in the step's checkpoint).
    """
    out, solver, test = checkpointer.save_dir, cfg.SOLVER, cfg.TEST
    metrics_file, printer = MetricsFile(out / METRICS_FILE), MetricsPrinter()
    tensorboard = TensorboardXWriter(out) if cfg.TENSORBOARD.ENABLED else None
    checkpoints = PeriodicCheckpointer(checkpointer, solver.CHECKPOINT_PERIOD, solver.MAX_EPOCH,
                                       period_iters=solver.CHECKPOINT_PERIOD_ITERS,
                                       period_minutes=solver.CHECKPOINT_PERIOD_MINUTES,
                                       keep=solver.CHECKPOINT_KEEP)
    hooks: list[HookBase] = [
        IterationTimer(),
        LayerFreezer(model, [n for n in cfg.MODEL.FREEZE_LAYERS if n], solver.FREEZE_ITERS),
        LayerFreezer(model, classifier_weight_names(model), solver.FREEZE_FC_ITERS),
    ]
    if test.PRECISE_BN.ENABLED:
        hooks.append(PreciseBN(model, precise_bn_images, test.PRECISE_BN.NUM_ITER,
                               test.EVAL_PERIOD, solver.MAX_EPOCH))
    hooks += [
        PeriodicEvaluator(evaluate, test.EVAL_PERIOD, solver.MAX_EPOCH,
                          fan_out(metrics_file, tensorboard, sink),
                          best_metric=test.BEST_METRIC, save_best=checkpointer.save_weights),
        ProgressBar(),
        *extra_hooks,
        *(hook_from_name(name, cfg) for name in cfg.HOOKS),
        PeriodicWriter([metrics_file, printer, tensorboard, sink], solver.LOG_PERIOD),
        # Last: a checkpoint holds the other hooks' state as this step left it.
        checkpoints,
        StopOnSignal(checkpoints),  # SIGTERM / SIGINT / SIGUSR1: checkpoint, then Preempted
    ]
    return hooks
