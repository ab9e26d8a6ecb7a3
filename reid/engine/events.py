"""Training metrics kept in OUTPUT_DIR, with or without MLflow.

``MetricsFile`` writes ``metrics.json``: one JSON object per line, ``{"iteration": n, ...}``
(FastReID's JSONWriter format), for training metrics and periodic evaluations alike.
``MetricsPrinter`` writes the training metrics as one line of the log (log.txt), with an
ETA. Both are hooks (they need to know where training starts) and ``MetricsSink`` callables;
``fan_out`` sends one report to several sinks. Only rank 0 writes.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import time
from pathlib import Path
from typing import IO, Optional

from reid.engine.hook_base import HookBase, MetricsSink
from reid.utils import comm
from reid.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def fan_out(*sinks: Optional[MetricsSink]) -> MetricsSink:
    """One sink that sends each report to every sink given (``None`` ones are skipped)."""
    targets = [sink for sink in sinks if sink is not None]

    def send(metrics: dict, step: int) -> None:
        for sink in targets:
            sink(metrics, step)
    return send


def json_value(value):
    """A metric as JSON can hold it: non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.json, in order; a torn last line (a crash mid-write) is
    skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsFile(HookBase):
    """Appends each report to ``path`` as ``{"iteration": step, **metrics}``, flushed at once.

    When training starts (fresh or resumed) the records after the starting iteration are
    dropped, so that a resumed run's file reads as one run without repeated iterations; the
    records before it are kept. That rewrite is atomic.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file: Optional[IO[str]] = None

    def before_train(self) -> None:
        if not comm.is_main_process():
            return
        start = self.trainer.iter
        kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= start] \
            if self.path.is_file() else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")

    def __call__(self, metrics: dict, step: int) -> None:
        if self.file is None:
            return
        record = {"iteration": step, **{k: json_value(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def after_train(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class MetricsPrinter(HookBase):
    """Logs each training report as one line: iteration, epoch, the losses, lr, images/s and
    the ETA (from the wall-clock pace since training started)."""

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._start_iter = self.trainer.iter

    def __call__(self, metrics: dict, step: int) -> None:
        if not comm.is_main_process():
            return
        trainer = self.trainer
        losses = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()
                           if "loss" in name)
        done = step - self._start_iter
        elapsed = time.perf_counter() - self._start_time
        eta = elapsed / done * (trainer.max_iter - step) if done > 0 else 0.0
        logger.info("iter %d/%d, epoch %.2f/%d: %s, lr %.3g, %.1f images/s, eta %s", step,
                    trainer.max_iter, metrics.get("epoch", step / trainer.iters_per_epoch),
                    trainer.max_epoch, losses, metrics.get("lr", float("nan")),
                    metrics.get("images_per_sec", float("nan")),
                    datetime.timedelta(seconds=round(eta)))
