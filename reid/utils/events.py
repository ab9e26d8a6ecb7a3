"""Training events under FastReID's names (``fastreid.utils.events``).

``EventStorage`` collects what a training step produces: scalars (``put_scalar(s)``, each kept
in a ``HistoryBuffer`` with its median / average over a window), images (``put_image``) and
histograms (``put_histogram``). The trainer opens one for the whole training, so that code
deep inside the model reaches it with ``get_event_storage()``. Writers take the reports a
periodic-writer hook (``reid.engine.events.PeriodicWriter``) makes from it: ``JSONWriter``
(OUTPUT_DIR/metrics.json), ``TensorboardXWriter`` (event files for TensorBoard) and
``CommonMetricPrinter`` (one log line); any ``sink(metrics, step)`` callable (the MLflow one)
is a writer too.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Optional

import torch

from reid.errors import ReidError
from reid.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

# One stack per thread: trainings run concurrently in threads (the distill flow's branches,
# Prefect's thread-pool task runner), and each model must find its own training's storage.
_THREAD = threading.local()


def _storage_stack() -> list["EventStorage"]:
    if not hasattr(_THREAD, "storages"):
        _THREAD.storages = []
    return _THREAD.storages


def get_event_storage() -> "EventStorage":
    """The storage of the training running now (inside ``with EventStorage(...)``)."""
    stack = _storage_stack()
    if not stack:
        raise ReidError("get_event_storage() must be called inside a training (an open "
                        "`with EventStorage(...)` block)")
    return stack[-1]


class HistoryBuffer:
    """The last ``max_length`` values of a scalar with their iterations, and the average of
    every value ever added (``global_avg``). FastReID keeps a million; writers need only their
    window, so ten thousand (about 1 MB a scalar) bounds a long training's memory."""

    def __init__(self, max_length: int = 10_000) -> None:
        self.max_length = max_length
        self._data: deque[tuple[float, int]] = deque(maxlen=max_length)
        self._count = 0
        self._global_avg = 0.0

    def update(self, value: float, iteration: int) -> None:
        self._data.append((float(value), int(iteration)))
        self._count += 1
        self._global_avg += (float(value) - self._global_avg) / self._count

    def latest(self) -> float:
        return self._data[-1][0]

    def median(self, window: int) -> float:
        """The median of the last ``window`` values (the mean of the middle two for an even
        count)."""
        return float(torch.tensor(self._window(window), dtype=torch.float64).quantile(0.5))

    def avg(self, window: int) -> float:
        values = self._window(window)
        return sum(values) / len(values)

    def global_avg(self) -> float:
        return self._global_avg

    def values(self) -> list[tuple[float, int]]:
        return list(self._data)

    def _window(self, window: int) -> list[float]:
        return [value for value, _ in list(self._data)[-window:]]

    def state_dict(self, keep: int) -> dict:
        """The last ``keep`` values and the global average: what a resumed run's windows
        need (a checkpoint holds this, not the whole history)."""
        return {"values": [[v, i] for v, i in list(self._data)[-keep:]],
                "count": self._count, "global_avg": self._global_avg}

    def load_state_dict(self, state: dict) -> None:
        self._data = deque(((float(v), int(i)) for v, i in state["values"]),
                           maxlen=self.max_length)
        self._count, self._global_avg = int(state["count"]), float(state["global_avg"])


class EventStorage:
    """Scalars, images and histograms of a training, stamped with the current ``iter``.

    ``with EventStorage(start_iter):`` makes it the one ``get_event_storage()`` returns.
    ``smoothing_hint`` says whether a writer should report a scalar's median over a window
    (losses) or its latest value (the learning rate).
    """

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._history: dict[str, HistoryBuffer] = {}
        self._smoothing_hints: dict[str, bool] = {}
        self.images: list[tuple[str, torch.Tensor, int]] = []
        self.histograms: list[dict] = []

    def put_scalar(self, name: str, value: float, smoothing_hint: bool = True) -> None:
        if name in self._smoothing_hints and self._smoothing_hints[name] != smoothing_hint:
            raise ReidError(f"scalar {name!r} was put with smoothing_hint "
                            f"{self._smoothing_hints[name]} before; give it the same each time")
        self._smoothing_hints[name] = smoothing_hint
        self._history.setdefault(name, HistoryBuffer()).update(float(value), self.iter)

    def put_scalars(self, *, smoothing_hint: bool = True, **scalars: float) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def put_image(self, name: str, image: torch.Tensor) -> None:
        """An image (C x H x W, float in [0, 1] or uint8) for the image-capable writers."""
        self.images.append((name, image.detach().cpu(), self.iter))

    def put_histogram(self, name: str, values: torch.Tensor, bins: int = 1000) -> None:
        """A histogram of ``values`` over ``bins`` equal bins between their min and max."""
        values = values.detach().float().cpu().flatten()
        low, high = float(values.min()), float(values.max())
        counts = torch.histc(values, bins=bins, min=low, max=high)
        edges = torch.linspace(low, high, bins + 1)
        self.histograms.append(dict(
            tag=name, min=low, max=high, num=len(values), sum=float(values.sum()),
            sum_squares=float((values ** 2).sum()), bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(), global_step=self.iter))

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise ReidError(f"no scalar named {name!r} was put in the event storage; it has: "
                            f"{', '.join(self._history) or 'none'}")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return dict(self._history)

    def smoothing_hints(self) -> dict[str, bool]:
        return dict(self._smoothing_hints)

    def latest(self) -> dict[str, tuple[float, int]]:
        """``{name: (latest value, its iteration)}``."""
        return {name: history.values()[-1] for name, history in self._history.items()}

    def latest_with_smoothing_hint(self, window: int = 20) -> dict[str, float]:
        """Each scalar as a writer reports it: its median over the last ``window`` values
        when smoothed, else its latest value."""
        return {name: history.median(window) if self._smoothing_hints[name]
                else history.latest() for name, history in self._history.items()}

    def step(self) -> None:
        self.iter += 1

    def clear_images(self) -> None:
        self.images = []

    def clear_histograms(self) -> None:
        self.histograms = []

    def state_dict(self, keep: int) -> dict:
        return {name: {"history": history.state_dict(keep),
                       "smoothing_hint": self._smoothing_hints[name]}
                for name, history in self._history.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, saved in state.items():
            self._history[name] = HistoryBuffer()
            self._history[name].load_state_dict(saved["history"])
            self._smoothing_hints[name] = bool(saved["smoothing_hint"])

    def __enter__(self) -> "EventStorage":
        _storage_stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        stack = _storage_stack()
        assert stack[-1] is self
        stack.pop()


class EventWriter:
    """Takes a report ``write(metrics, step)`` (also callable as a ``MetricsSink``).

    ``start`` is called once before training (rank 0 only) with where it starts, and
    ``close`` after it; ``images`` / ``histograms`` hold the storage's since the last report.
    """

    def start(self, start_iter: int, max_iter: int, max_epoch: int) -> None:
        pass

    def write(self, metrics: dict, step: int, images: list = (), histograms: list = ()) -> None:
        raise NotImplementedError

    def __call__(self, metrics: dict, step: int) -> None:
        self.write(metrics, step)

    def close(self) -> None:
        pass


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


class JSONWriter(EventWriter):
    """Appends each report to ``path`` as ``{"iteration": step, **metrics}`` (one JSON object
    per line, FastReID's format), flushed at once.

    When training starts (fresh or resumed) the records after the starting iteration are
    dropped, so that a resumed run's file reads as one run without repeated iterations; the
    records before it are kept. That rewrite is atomic.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file: Optional[IO[str]] = None

    def start(self, start_iter: int, max_iter: int = 0, max_epoch: int = 0) -> None:
        kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= start_iter] \
            if self.path.is_file() else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")

    def write(self, metrics: dict, step: int, images: list = (), histograms: list = ()) -> None:
        if self.file is None:
            return
        record = {"iteration": step, **{k: json_value(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class TensorboardXWriter(EventWriter):
    """Scalars, images and histograms as TensorBoard event files under ``log_dir``
    (``tensorboard --logdir OUTPUT_DIR``). Needs the ``tensorboard`` extra."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def start(self, start_iter: int, max_iter: int = 0, max_epoch: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer needs the tensorboard package
            raise ReidError("TensorBoard event files need the tensorboard package: pip install "
                            "'reid[tensorboard]' (or set TENSORBOARD.ENABLED False)") from exc
        # purge_step: a resumed run's events after its start replace the interrupted run's.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=start_iter or None)

    def write(self, metrics: dict, step: int, images: list = (), histograms: list = ()) -> None:
        if self.writer is None:
            return
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, step)
        for name, image, iteration in images:
            self.writer.add_image(name, image, iteration)
        for params in histograms:
            self.writer.add_histogram_raw(**params)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CommonMetricPrinter(EventWriter):
    """Logs each training report as one line: iteration, epoch, the losses, lr, images/s,
    seconds per iteration (when an IterationTimer hook measures it) and the ETA (from the
    wall-clock pace since training started). Evaluation reports (no ``epoch``) are left to
    the evaluation hook's own line."""

    def start(self, start_iter: int, max_iter: int, max_epoch: int) -> None:
        self._start_time = time.perf_counter()
        self._start_iter, self.max_iter, self.max_epoch = start_iter, max_iter, max_epoch

    def write(self, metrics: dict, step: int, images: list = (), histograms: list = ()) -> None:
        if "epoch" not in metrics:
            return
        losses = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()
                           if "loss" in name)
        done = step - self._start_iter
        elapsed = time.perf_counter() - self._start_time
        eta = elapsed / done * (self.max_iter - step) if done > 0 else 0.0
        timing = f", {metrics['time']:.3f} s/it" if "time" in metrics else ""
        logger.info("iter %d/%d, epoch %.2f/%d: %s, lr %.3g, %.1f images/s%s, eta %s", step,
                    self.max_iter, metrics["epoch"], self.max_epoch, losses,
                    metrics.get("lr", float("nan")), metrics.get("images_per_sec", float("nan")),
                    timing, datetime.timedelta(seconds=round(eta)))
