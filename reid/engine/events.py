"""The periodic-writer hook: training reports from the trainer's ``EventStorage`` to writers.

Every ``period`` iterations (and at each epoch's end) ``PeriodicWriter`` turns the storage
(``reid.utils.events``) into one report and hands it to its writers: ``JSONWriter``
(``metrics.json``: one JSON object per line, ``{"iteration": n, ...}``, FastReID's format, for
training metrics and periodic evaluations alike), ``CommonMetricPrinter`` (a line of log.txt
with an ETA), ``TensorboardXWriter`` and any ``sink(metrics, step)`` callable (the MLflow one).
Only rank 0 writes. ``MetricsFile`` / ``MetricsPrinter`` are the earlier names of the JSON
writer and the printer; ``fan_out`` sends one report to several sinks.
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

from reid.engine.hook_base import HookBase, MetricsSink
from reid.utils import comm
from reid.utils.events import (CommonMetricPrinter, EventWriter, JSONWriter, json_value,
                               read_metrics)

__all__ = ["METRICS_FILE", "MetricsFile", "MetricsPrinter", "PeriodicWriter", "fan_out",
           "json_value", "read_metrics"]

METRICS_FILE = "metrics.json"
MetricsFile = JSONWriter
MetricsPrinter = CommonMetricPrinter
# FastReID's writers smooth over the last 20 values.
SMOOTHING_WINDOW = 20


def fan_out(*sinks: Optional[MetricsSink]) -> MetricsSink:
    """One sink that sends each report to every sink given (``None`` ones are skipped)."""
    targets = [sink for sink in sinks if sink is not None]

    def send(metrics: dict, step: int) -> None:
        for sink in targets:
            sink(metrics, step)
    return send


class PeriodicWriter(HookBase):
    """Reports on rank 0 to every writer every ``period`` iterations and at each epoch's end;
    ``step`` is the number of iterations done.

    Report: every scalar of the trainer's storage (the loss terms, total_loss, what the model
    or a hook put there) as its median over the last ``window`` values (its latest value
    when put with ``smoothing_hint=False``, as the lr), averaged over the ranks (one
    all-reduce per report, every rank calls it); images_per_sec since the last report (summed
    over the ranks) and epoch (fractional progress, e.g. 2.5). The storage's images and
    histograms go to the writers that show them, then are dropped. The windows are part of
    the training checkpoint, so a resumed run's reports equal the uninterrupted run's.

    ``writers``: ``EventWriter``s and plain ``sink(metrics, step)`` callables (or one of them).
    """

    def __init__(self, writers: Iterable | MetricsSink, period: int,
                 window: int = SMOOTHING_WINDOW) -> None:
        self.writers = [writers] if callable(writers) else [w for w in writers if w is not None]
        self.period = max(1, int(period))
        self.window = window

    def before_train(self) -> None:
        trainer = self.trainer
        resumed = self.__dict__.pop("_resumed", {})
        trainer.storage.load_state_dict(resumed.get("storage", {}))
        self._count = resumed.get("count", 0)
        self._mark()
        if comm.is_main_process():
            for writer in self._event_writers():
                writer.start(trainer.iter, trainer.max_iter, trainer.max_epoch)

    def state_dict(self) -> dict:
        return {"storage": self.trainer.storage.state_dict(self.window), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self._resumed = state

    def after_step(self) -> None:
        self._count += 1
        if (self.trainer.iter + 1) % self.period == 0:
            self.write(self.trainer.iter + 1)

    def after_epoch(self) -> None:
        if self._count:  # not already written by after_step at this very iteration
            self.write(self.trainer.iter)

    def after_train(self) -> None:
        if comm.is_main_process():
            for writer in self._event_writers():
                writer.close()

    def write(self, step: int) -> None:
        trainer, storage = self.trainer, self.trainer.storage
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        hints = storage.smoothing_hints()
        reported = storage.latest_with_smoothing_hint(self.window)
        smoothed = {name: value for name, value in reported.items() if hints[name]}
        # One all-reduce: the medians averaged over the ranks, the images summed (mean x ranks).
        smoothed["images"] = float(trainer.images_seen - self._images)
        smoothed = comm.reduce_dict(smoothed, average=True)
        images = smoothed.pop("images") * comm.get_world_size()
        metrics = {**{name: value for name, value in reported.items() if not hints[name]},
                   **smoothed}
        metrics = {name: metrics[name] for name in reported}  # the storage's order
        metrics.update(images_per_sec=images / elapsed, epoch=step / trainer.iters_per_epoch)
        if comm.is_main_process():
            for writer in self.writers:
                if isinstance(writer, EventWriter):
                    writer.write(metrics, step, storage.images, storage.histograms)
                else:
                    writer(metrics, step)
        storage.clear_images()
        storage.clear_histograms()
        self._count = 0
        self._mark()

    def _mark(self) -> None:
        """Where the next report's images/s starts counting."""
        self._images = self.trainer.images_seen
        self._start = time.perf_counter()

    def _event_writers(self) -> list[EventWriter]:
        return [w for w in self.writers if isinstance(w, EventWriter)]
