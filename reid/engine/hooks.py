"""Trainer hooks: checkpointing, metrics (``PeriodicWriter``, also ``MetricsLogger``), progress
bar, layer freezing and periodic evaluation.

``HookBase`` (what a hook is) and ``MetricsSink`` live in ``reid.engine.hook_base`` and are
importable from here too.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from reid.engine.hook_base import HookBase, MetricsSink
from reid.engine.events import PeriodicWriter
from reid.engine.train_hooks import IterationTimer, PreciseBN  # noqa: F401 (FastReID's names)
from reid.errors import ReidError
from reid.utils import comm

if TYPE_CHECKING:
    from reid.engine.checkpoint import Checkpointer

logger = logging.getLogger(__name__)


class PeriodicCheckpointer(HookBase):
    """Training checkpoints (model, optimizer, scheduler and ``trainer.state_dict()``):
    ``model_{epoch:04d}.pth`` after every ``period_epochs`` epochs (counted from 1),
    ``model_iter_{iteration:07d}.pth`` after every ``period_iters`` iterations and whenever
    ``period_minutes`` of wall-clock have passed since the last one (each 0 = off), and
    ``model_final.pth`` when training completes. One checkpoint at most per iteration.

    Only the newest ``keep`` periodic checkpoints stay (0 = all): an older one is deleted once
    the new one is in place. ``saved`` lists the files this training wrote, oldest first:
    OUTPUT_DIR may also hold checkpoints of an earlier run, which must not be taken for this
    run's (nor deleted by it). ``save_now(reason)`` writes one at the current iteration (the
    preemption hook calls it on every rank).
    """

    def __init__(self, checkpointer: "Checkpointer", period_epochs: int, max_epoch: int,
                 period_iters: int = 0, period_minutes: float = 0.0, keep: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.checkpointer = checkpointer
        self.period = period_epochs
        self.max_epoch = max_epoch
        self.period_iters = period_iters
        self.period_s = period_minutes * 60.0
        self.keep = keep
        self.clock = clock
        self.saved: list[str] = []
        self.periodic: list[str] = []  # this run's periodic files, oldest first (resumed too)
        self.last_iteration = -1  # the iteration of the last checkpoint this hook wrote

    def state_dict(self) -> dict:
        return {"periodic": list(self.periodic)}

    def load_state_dict(self, state: dict) -> None:
        self.periodic = list(state.get("periodic", []))

    def before_train(self) -> None:
        self._last_save = self.clock()
        # A resumed run's last good checkpoint is the one it resumed from.
        if self.trainer.start_iter > 0:
            last = self.checkpointer.last_checkpoint()
            self.trainer.last_checkpoint = str(last) if last else None

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.done % trainer.iters_per_epoch:  # an epoch's end is after_epoch's
            self._save_if_due(by_epoch=False)

    def after_epoch(self) -> None:
        self._save_if_due(by_epoch=self.period > 0 and (self.trainer.epoch + 1) % self.period == 0)

    def after_train(self) -> None:
        if self.trainer.completed:
            self._save("model_final", self.max_epoch)

    def _save_if_due(self, by_epoch: bool) -> None:
        done = self.trainer.done
        if done >= self.trainer.max_iter:
            return  # model_final follows
        by_iters = self.period_iters > 0 and done % self.period_iters == 0
        # Every rank must agree (they all take part in a save): rank 0's clock decides.
        by_time = self.period_s > 0 and any_rank_flag(
            comm.is_main_process() and self.clock() - self._last_save >= self.period_s)
        if by_epoch:
            self.save_periodic(f"model_{self.trainer.epoch + 1:04d}")
        elif by_iters or by_time:
            self.save_periodic(f"model_iter_{done:07d}")

    def save_now(self) -> str:
        """A periodic checkpoint at the current iteration (every rank calls it); its path."""
        return self.save_periodic(f"model_iter_{self.trainer.done:07d}")

    def save_periodic(self, name: str) -> str:
        file = self.checkpointer.path_of(name).name
        kept = [f for f in self.periodic if f != file] + [file]
        older = kept[:-self.keep] if self.keep > 0 else []
        self.periodic = kept[len(older):]  # what the new checkpoint records
        path = self._save(name, self.trainer.done // self.trainer.iters_per_epoch)
        for old in older:  # only once the new one is in place
            self.checkpointer.delete(old)
        return path

    def _save(self, name: str, epoch: int) -> str:
        path = self.checkpointer.save(name, epoch=epoch, iteration=self.trainer.done,
                                      trainer=self.trainer.state_dict())
        self._last_save = self.clock()
        self.last_iteration = self.trainer.done
        self.trainer.last_checkpoint = str(path)
        self.saved.append(str(path))
        return str(path)


def any_rank_flag(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call it; CPU tensor over gloo,
    this process's GPU over NCCL)."""
    if comm.get_world_size() == 1:
        return flag
    return bool(comm.reduce_dict({"flag": float(flag)}, average=False)["flag"] > 0)


# The periodic-writer hook (reid.engine.events), under its earlier name here too.
MetricsLogger = PeriodicWriter


class ProgressBar(HookBase):
    """A tqdm bar over all iterations on rank 0, with epoch, loss and ETA.

    While it shows, log records for the console are written above the bar (tqdm's logging
    redirect) instead of through it; log files are untouched.
    """

    def __init__(self, **tqdm_kwargs) -> None:
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: Optional[tqdm] = None
        self._console = contextlib.ExitStack()

    def before_train(self) -> None:
        if comm.is_main_process():
            self.bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.iter, desc="train",
                            unit="it", dynamic_ncols=True, **self.tqdm_kwargs)
            self._console.enter_context(logging_redirect_tqdm())

    def after_step(self) -> None:
        if self.bar is None:
            return
        trainer = self.trainer
        self.bar.set_postfix(epoch=f"{trainer.epoch + 1}/{trainer.max_epoch}",
                             loss=f"{trainer.metrics['total_loss']:.4f}", refresh=False)
        self.bar.update(1)

    def after_train(self) -> None:
        self._console.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LayerFreezer(HookBase):
    """Freezes the modules named in ``names`` (MODEL.FREEZE_LAYERS, e.g. "backbone" or
    "backbone.layer1", as in ``model.named_modules()``) for the
    first ``freeze_iters`` iterations (SOLVER.FREEZE_ITERS): their parameters get
    requires_grad False and they stay in eval mode (BatchNorm statistics unchanged); then
    both are restored.

    ``model`` is the unwrapped model. Under DDP wrap it with find_unused_parameters=True,
    since frozen parameters receive no gradient.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], freeze_iters: int) -> None:
        self.names = [n for n in names if n]
        self.freeze_iters = freeze_iters
        modules, params = dict(model.named_modules()), dict(model.named_parameters())
        unknown = [n for n in self.names if n not in modules and n not in params]
        if unknown and freeze_iters > 0:
            children = ", ".join(name for name, _ in model.named_children())
            raise ReidError(f"MODEL.FREEZE_LAYERS names no module called {', '.join(unknown)}; "
                            f"the model's top-level modules are: {children}")
        self.modules = [modules[n] for n in self.names if n in modules]
        # A bare parameter (e.g. the classifier's "heads.weight" for SOLVER.FREEZE_FC_ITERS)
        # only stops receiving gradients.
        self.params = [params[n] for n in self.names if n in params and n not in modules]
        self._saved_requires_grad: dict[nn.Parameter, bool] = {}
        self.frozen = False

    def before_train(self) -> None:
        if (self.modules or self.params) and self.trainer.iter < self.freeze_iters:
            self._freeze()

    def before_step(self) -> None:
        if self.frozen:
            # The trainer (or an evaluation hook) may have switched the model to train mode.
            for module in self.modules:
                module.eval()

    def after_step(self) -> None:
        if self.frozen and self.trainer.iter + 1 >= self.freeze_iters:
            self._unfreeze()

    def after_train(self) -> None:
        if self.frozen:
            self._unfreeze()

    def _freeze(self) -> None:
        for param in [p for m in self.modules for p in m.parameters()] + self.params:
            self._saved_requires_grad.setdefault(param, param.requires_grad)
            param.requires_grad_(False)
        for module in self.modules:
            module.eval()
        self.frozen = True
        logger.info("froze %s for the first %d iterations", ", ".join(self.names),
                    self.freeze_iters)

    def _unfreeze(self) -> None:
        for param, requires_grad in self._saved_requires_grad.items():
            param.requires_grad_(requires_grad)
        self._saved_requires_grad.clear()
        self.frozen = False
        for module in self.modules:
            module.train(self.trainer.model.training)
        logger.info("unfroze %s at iteration %d", ", ".join(self.names), self.trainer.iter + 1)


class PeriodicEvaluator(HookBase):
    """Evaluates every ``period_epochs`` epochs (TEST.EVAL_PERIOD) during training.

    ``evaluate()`` returns ``{test set: {metric: value}}``; every rank calls it (feature
    extraction gathers across ranks), rank 0 reports it as ``eval.<set>.<metric>``. The last
    epoch is left to the pipeline's evaluate stage, which runs on the precise-BN model.

    With ``save_best`` (``fn(name, **data)`` writing weights-only files, rank 0), the model
    whose ``best_metric`` (``"<metric>"`` of the first test set, or ``"<set>.<metric>"``;
    higher is better) is the highest so far is written as ``model_best.pth``; the best value
    and its iteration are part of the training checkpoint. Evaluation leaves the random
    generators as it found them, so a resumed run draws what the uninterrupted one drew.
    """

    def __init__(self, evaluate: Callable[[], dict], period_epochs: int, max_epoch: int,
                 sink: Optional[MetricsSink] = None, best_metric: str = "mAP",
                 save_best: Optional[Callable[..., object]] = None) -> None:
        self.evaluate = evaluate
        self.period = period_epochs
        self.max_epoch = max_epoch
        self.sink = sink
        self.best_metric = best_metric
        self.save_best = save_best
        self.best: dict = {}  # {"metric", "value", "iteration"} once evaluated

    def state_dict(self) -> dict:
        return {"best": dict(self.best)} if self.best else {}

    def load_state_dict(self, state: dict) -> None:
        self.best = dict(state.get("best", {}))

    def after_epoch(self) -> None:
        done = self.trainer.epoch + 1
        if self.period <= 0 or done % self.period or done >= self.max_epoch:
            return
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())
                                   if torch.cuda.is_initialized() else []):
            results = self.evaluate()
        flat = {f"eval.{name}.{metric}": value for name, metrics in results.items()
                for metric, value in metrics.items()}
        logger.info("evaluation after epoch %d: %s", done,
                    ", ".join(f"{k} {v:.2f}" for k, v in flat.items()))
        if self.sink is not None and comm.is_main_process():
            self.sink(flat, self.trainer.iter)
        self._keep_if_best(results)

    def _keep_if_best(self, results: dict) -> None:
        name, value = best_metric_value(results, self.best_metric)
        if self.best and value <= self.best["value"]:
            return
        self.best = {"metric": name, "value": float(value), "iteration": self.trainer.iter}
        logger.info("best %s so far: %.2f at iteration %d", name, value, self.trainer.iter)
        if self.save_best is not None:
            self.save_best("model_best", best=dict(self.best))


def check_best_metric(wanted: str, test_sets) -> None:
    """TEST.BEST_METRIC refused before training when it names no metric or a test set that
    DATASETS.TESTS lacks (the metric itself is known only once evaluated)."""
    test_set, _, metric = wanted.rpartition(".")
    if not metric or (test_set and test_set not in test_sets):
        raise ReidError(f"TEST.BEST_METRIC {wanted!r} must be a metric (e.g. mAP, Rank-1) of "
                        f"the first test set or <test set>.<metric> with a test set of "
                        f"DATASETS.TESTS ({', '.join(test_sets)})")


def best_metric_value(results: dict, wanted: str) -> tuple[str, float]:
    """(``"<set>.<metric>"``, value) of TEST.BEST_METRIC in ``{set: {metric: value}}``:
    ``"<metric>"`` names the first set's."""
    test_set, _, metric = wanted.rpartition(".")
    test_set = test_set or next(iter(results), "")
    value = results.get(test_set, {}).get(metric)
    if value is None:
        found = ", ".join(f"{s}.{m}" for s, metrics in results.items() for m in metrics)
        raise ReidError(f"TEST.BEST_METRIC {wanted!r} is not among the evaluation's results "
                        f"({found}); name a metric (e.g. mAP) or <test set>.<metric>")
    return f"{test_set}.{metric}", float(value)
