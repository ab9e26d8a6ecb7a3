"""FastReID's IterationTimer and PreciseBN hooks (``fastreid.engine.hooks``), importable from
``reid.engine.hooks`` too; ``reid.engine.defaults.build_hooks`` places them."""
from __future__ import annotations

import datetime
import logging
import time
from typing import Callable, Iterable, Optional

from torch import nn

from reid.engine import rng
from reid.engine.hook_base import HookBase
from reid.engine.precise_bn import update_bn_stats

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
