"""Trainer hooks: checkpointing, metrics, progress bar and layer freezing.

``HookBase`` (what a hook is) and ``MetricsSink`` live in ``reid.engine.hook_base`` and are
importable from here too.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from reid.engine.hook_base import HookBase, MetricsSink
from reid.errors import ReidError
from reid.utils import comm

if TYPE_CHECKING:
    from reid.engine.checkpoint import Checkpointer

logger = logging.getLogger(__name__)


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{epoch:04d}.pth`` after every ``period_epochs`` epochs (epochs counted
    from 1; 0 disables them) and ``model_final.pth`` when training completes.

    ``saved`` lists the files this training wrote, oldest first: OUTPUT_DIR may also hold
    checkpoints of an earlier run, which must not be taken for this run's."""

    def __init__(self, checkpointer: "Checkpointer", period_epochs: int, max_epoch: int) -> None:
        self.checkpointer = checkpointer
        self.period = period_epochs
        self.max_epoch = max_epoch
        self.saved: list[str] = []

    def before_train(self) -> None:
        # A resumed run's last good checkpoint is the one it resumed from.
        if self.trainer.start_epoch > 0:
            last = self.checkpointer.last_checkpoint()
            self.trainer.last_checkpoint = str(last) if last else None

    def after_epoch(self) -> None:
        done = self.trainer.epoch + 1
        if self.period > 0 and done % self.period == 0 and done < self.max_epoch:
            self._save(f"model_{done:04d}", done)

    def after_train(self) -> None:
        if self.trainer.completed:
            self._save("model_final", self.max_epoch)

    def _save(self, name: str, epoch: int) -> None:
        path = self.checkpointer.save(name, epoch=epoch, iteration=self.trainer.iter)
        self.trainer.last_checkpoint = str(path)
        self.saved.append(str(path))


class MetricsLogger(HookBase):
    """Sends ``sink(metrics, step)`` on rank 0 every ``period`` iterations and at each epoch's
    end; ``step`` is the number of iterations done.

    Metrics: each loss term and total_loss averaged over the iterations since the last call,
    the current lr (of the first parameter group), images_per_sec over those iterations
    (all ranks, assuming equal batches) and epoch (fractional progress, e.g. 2.5).
    """

    def __init__(self, sink: MetricsSink, period: int) -> None:
        self.sink = sink
        self.period = max(1, int(period))

    def before_train(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0
        self._images = self.trainer.images_seen
        self._start = time.perf_counter()

    def after_step(self) -> None:
        for name, value in self.trainer.metrics.items():
            if name != "lr":
                self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1
        if (self.trainer.iter + 1) % self.period == 0:
            self._emit(self.trainer.iter + 1)

    def after_epoch(self) -> None:
        if self._count:  # not already sent by after_step at this very iteration
            self._emit(self.trainer.iter)

    def _emit(self, step: int) -> None:
        trainer = self.trainer
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        images = (trainer.images_seen - self._images) * comm.get_world_size()
        metrics = {name: total / self._count for name, total in self._sums.items()}
        metrics.update(lr=trainer.metrics["lr"], images_per_sec=images / elapsed,
                       epoch=step / trainer.iters_per_epoch)
        if comm.is_main_process():
            self.sink(metrics, step)
        self._reset()


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
    """

    def __init__(self, evaluate: Callable[[], dict], period_epochs: int, max_epoch: int,
                 sink: Optional[MetricsSink] = None) -> None:
        self.evaluate = evaluate
        self.period = period_epochs
        self.max_epoch = max_epoch
        self.sink = sink

    def after_epoch(self) -> None:
        done = self.trainer.epoch + 1
        if self.period <= 0 or done % self.period or done >= self.max_epoch:
            return
        results = self.evaluate()
        flat = {f"eval.{name}.{metric}": value for name, metrics in results.items()
                for metric, value in metrics.items()}
        logger.info("evaluation after epoch %d: %s", done,
                    ", ".join(f"{k} {v:.2f}" for k, v in flat.items()))
        if self.sink is not None and comm.is_main_process():
            self.sink(flat, self.trainer.iter)
