"""The hooks of a training, as FastReID's ``DefaultTrainer.build_hooks`` assembles them, and
the hooks it adds beside ``reid.engine.hooks``: ``IterationTimer`` and ``PreciseBN``.

A user adds hooks without editing ``reid/stages.py``: ``stages.train(cfg, hooks=[...])`` in
Python, or ``HOOKS: ["my_package.hooks:MyHook"]`` in the config (imported and built here).
"""
from __future__ import annotations

import datetime
import importlib
import inspect
import logging
import time
from typing import Any, Callable, Iterable, Optional

from torch import nn

from reid.engine import rng
from reid.engine.events import METRICS_FILE, MetricsFile, MetricsPrinter, PeriodicWriter, fan_out
from reid.engine.hook_base import HookBase, MetricsSink
from reid.engine.hooks import LayerFreezer, PeriodicCheckpointer, PeriodicEvaluator, ProgressBar
from reid.engine.precise_bn import update_bn_stats
from reid.engine.preemption import StopOnSignal
from reid.errors import ReidError
from reid.modeling import classifier_weight_names
from reid.utils.events import TensorboardXWriter

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Times every iteration (its hooks included) and puts the seconds in the event storage
    as ``time`` (reported as its median over the window); when training ends, logs the
    overall speed, leaving out the first ``warmup_iter`` iterations (loader start-up, cuDNN
    tuning), as FastReID's does."""

    def __init__(self, warmup_iter: int = 3, clock: Callable[[], float] = time.perf_counter):
        self.warmup_iter = warmup_iter
        self.clock = clock

    def before_train(self) -> None:
        self._train_start = self.clock()
        self._timed_iters, self._timed_s = 0, 0.0

    def before_step(self) -> None:
        self._step_start = self.clock()

    def after_step(self) -> None:
        seconds = self.clock() - self._step_start
        self.trainer.storage.put_scalar("time", seconds)
        if self.trainer.iter >= self.trainer.start_iter + self.warmup_iter:
            self._timed_iters += 1
            self._timed_s += seconds

    def after_train(self) -> None:
        total = self.clock() - self._train_start
        if self._timed_iters:
            logger.info("overall training speed: %d iterations in %s (%.4f s / it)",
                        self._timed_iters,
                        datetime.timedelta(seconds=round(self._timed_s)),
                        self._timed_s / self._timed_iters)
        logger.info("total training time: %s", datetime.timedelta(seconds=round(total)))


class PreciseBN(HookBase):
    """Recomputes the BatchNorm statistics of ``model`` over ``num_iter`` batches of
    ``images()`` (an iterable of image batches, made on first use) right before each periodic
    evaluation (TEST.EVAL_PERIOD epochs, not the last: the pipeline's precise-BN stage does
    the final model), so those evaluations use precise statistics, as FastReID's
    ``hooks.PreciseBN`` does. Every rank runs it (the statistics are averaged over the ranks).
    The random generators are left as found, so the training's next steps are unchanged."""

    def __init__(self, model: nn.Module, images: Callable[[], Iterable], num_iter: int,
                 period_epochs: int, max_epoch: int) -> None:
        self.model = model
        self.images = images
        self.num_iter = num_iter
        self.period = period_epochs
        self.max_epoch = max_epoch
        self._data: Optional[Iterable] = None

    def after_epoch(self) -> None:
        done = self.trainer.epoch + 1
        if self.period <= 0 or done % self.period or done >= self.max_epoch:
            return
        state = rng.capture()
        try:
            if self._data is None:
                self._data = self.images()
            logger.info("precise-BN before the evaluation after epoch %d: %d batches", done,
                        self.num_iter)
            update_bn_stats(self.model, self._data, self.num_iter)
        finally:
            rng.restore(state)


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
