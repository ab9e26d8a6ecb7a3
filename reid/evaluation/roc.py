"""Verification metrics over all query x gallery pairs: TAR at given FARs and the ROC curve.

Definitions (pairs are every (query, gallery) pair except junk: same pid AND same camera):

* a *genuine* pair has the same pid (so a different camera), an *impostor* pair different pids;
* a pair is *accepted* at threshold ``t`` when its distance is ``< t``;
* ``FAR(t)`` = accepted impostors / impostors, ``TAR(t)`` = accepted genuine pairs / genuine pairs;
* ``TAR@FAR=f`` is the largest TAR over thresholds with ``FAR <= f``: with ``k = floor(f * I)``
  (``I`` impostor pairs) and ``v`` the ``(k+1)``-th smallest impostor distance, it is the
  share of genuine distances ``< v``. It is exact: the ``k+1`` smallest impostor distances are
  kept while streaming (everything above the running ``(k+1)``-th smallest is dropped), so
  memory is ``O(f * I)``, never the ``Q x G`` pair labels.

FastReID's ``TPR@FPR`` computes the curve with the roles of genuine and impostor swapped; this
module follows the biometric convention above (true accepts at a bounded false-accept rate).

The ROC *curve* comes from histograms of the distances with one bin per float32 value whose
top 16 bits agree (about 0.5 % of relative width, 32,641 bins): each curve point is exact at
its threshold (a bin edge); only the spacing of thresholds is limited.
"""
from __future__ import annotations

import csv
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reid.errors import ReidError
from reid.evaluation.positive_ranks import RowBlock

logger = logging.getLogger(__name__)

DEFAULT_FARS = (1e-4, 1e-3, 1e-2)
_BIN_SHIFT = 16
_LAST_BIN = 0x7F800000 >> _BIN_SHIFT  # the bin of +inf; NaN is counted there too
# Kept impostor distances may exceed the needed count by this much before being pruned.
COMPACT_SLACK = 1 << 16


@dataclass
class RocCurve:
    """Points of the ROC curve: accept when distance < threshold."""

    thresholds: np.ndarray
    far: np.ndarray
    tar: np.ndarray


@dataclass
class RocResult:
    tar_at_far: dict[float, float]          # FAR -> TAR, fractions
    curve: RocCurve
    num_genuine: int
    num_impostors: int
    far_thresholds: dict[float, float] = field(default_factory=dict)  # FAR -> distance v


class RocAccumulator:
    """Streams row blocks; thread-safe ``add``; ``result()`` once every block is in."""

    def __init__(self, q_pids: np.ndarray, g_pids: np.ndarray,
                 fars: tuple[float, ...] = DEFAULT_FARS) -> None:
        fars = tuple(float(f) for f in fars)
        if not fars or not all(0.0 < f < 1.0 for f in fars):
            raise ReidError(f"ROC: each FAR must be in (0, 1), got {list(fars)}")
        self.fars = fars
        ids, g_counts = np.unique(g_pids, return_counts=True)
        slot = np.clip(np.searchsorted(ids, q_pids), 0, len(ids) - 1)
        same = np.where(ids[slot] == q_pids, g_counts[slot], 0)
        self.num_impostors = int(len(q_pids) * len(g_pids) - same.sum())
        self.keep = int(np.floor(max(fars) * self.num_impostors)) + 1
        self.threshold = np.inf  # impostors at or above it cannot change the answer
        self._kept: list[np.ndarray] = []
        self._kept_size = 0
        self._genuine: list[np.ndarray] = []
        self._impostor_hist = np.zeros(_LAST_BIN + 1, dtype=np.int64)
        self._lock = threading.Lock()

    def add(self, block: RowBlock) -> None:
        genuine = block.pos_dist[block.positive_mask()]
        valid = block.members >= 0
        member_rows = np.broadcast_to(np.arange(len(block.dist))[:, None], valid.shape)
        rows, cols = member_rows[valid], block.members[valid]
        below = block.dist < self.threshold  # racy read is safe: the threshold only decreases
        below[rows, cols] = False
        candidates = block.dist[below]
        hist = np.bincount(_bins(block.dist).ravel(), minlength=_LAST_BIN + 1)
        hist -= np.bincount(_bins(block.dist[rows, cols]), minlength=_LAST_BIN + 1)
        with self._lock:
            self._genuine.append(genuine)
            self._impostor_hist += hist
            self._kept.append(candidates)
            self._kept_size += candidates.size
            if self._kept_size > 2 * self.keep + COMPACT_SLACK:
                self._compact()

    def result(self) -> RocResult:
        genuine = np.sort(np.concatenate(self._genuine)) if self._genuine else np.empty(0)
        if genuine.size == 0 or self.num_impostors == 0:
            raise ReidError("ROC needs genuine and impostor pairs: the test set has "
                            f"{genuine.size} genuine and {self.num_impostors} impostor pairs")
        kept = np.sort(np.concatenate(self._kept)) if self._kept else np.empty(0)
        tar_at_far, thresholds = {}, {}
        for far in self.fars:
            k = int(np.floor(far * self.num_impostors))
            v = kept[k] if k < kept.size else np.inf
            thresholds[far] = float(v)
            tar_at_far[far] = float(np.searchsorted(genuine, v, side="left") / genuine.size)
        curve = _curve(genuine, self._impostor_hist, self.num_impostors)
        return RocResult(tar_at_far=tar_at_far, curve=curve, num_genuine=int(genuine.size),
                         num_impostors=self.num_impostors, far_thresholds=thresholds)

    def _compact(self) -> None:
        values = np.concatenate(self._kept)
        if values.size > self.keep:
            values = np.partition(values, self.keep - 1)[:self.keep]
            self.threshold = min(self.threshold, float(values.max()))
        self._kept, self._kept_size = [values], values.size


def _bins(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each distance: the top 16 bits of its float32 pattern.

    For non-negative floats the bit pattern grows with the value, so bins are ordered; negative
    distances (rounding noise) fall into bin 0, NaN and +inf into the last bin.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    bins = np.clip(values.view(np.int32) >> _BIN_SHIFT, 0, _LAST_BIN).astype(np.intp)
    nan = np.isnan(values)
    if nan.any():  # a NaN's sign bit is arbitrary: put every NaN with +inf
        bins[nan] = _LAST_BIN
    return bins


def _bin_upper_edges() -> np.ndarray:
    """Upper edge of every finite bin (the last one is +inf)."""
    edges = ((np.arange(_LAST_BIN, dtype=np.int64) + 1) << _BIN_SHIFT).astype(np.int32)
    return edges.view(np.float32).astype(np.float64)


def _curve(genuine: np.ndarray, impostor_hist: np.ndarray, num_impostors: int) -> RocCurve:
    genuine_hist = np.bincount(_bins(genuine), minlength=_LAST_BIN + 1)
    # Accepting everything below a bin's upper edge accepts that bin and all lower ones.
    tar = np.cumsum(genuine_hist) / genuine.size
    far = np.cumsum(impostor_hist) / num_impostors
    edges = _bin_upper_edges()
    changed = np.flatnonzero(np.diff(tar, prepend=0.0) + np.diff(far, prepend=0.0) > 0)
    keep = changed[changed < _LAST_BIN]  # the +inf bin has no finite upper edge
    return RocCurve(thresholds=np.concatenate([[0.0], edges[keep]]),
                    far=np.concatenate([[0.0], far[keep]]),
                    tar=np.concatenate([[0.0], tar[keep]]))


def far_key(far: float) -> str:
    """Metric name of a TAR@FAR value (MLflow allows no '@' or '=' in metric names)."""
    return f"TAR_at_FAR_{far:.0e}"


def write_roc(result: RocResult, path_stem: str | Path) -> list[Path]:
    """Write ``<stem>.csv`` (threshold, far, tar) and ``<stem>.png`` if matplotlib is installed."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = [stem.with_suffix(".csv")]
    with open(written[0], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", "far", "tar"])
        for row in zip(result.curve.thresholds, result.curve.far, result.curve.tar):
            writer.writerow([f"{value:.8g}" for value in row])
    png = _plot(result, stem.with_suffix(".png"))
    if png is not None:
        written.append(png)
    return written


def _plot(result: RocResult, path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: F401  (optional: checked here, used by reid.visualize)

        from reid.visualize import plot_roc  # the one ROC figure, shared with the reports
    except ImportError:
        logger.info("matplotlib is not installed: ROC curve written as CSV only")
        return None
    note = f"{result.num_genuine:,} genuine, {result.num_impostors:,} impostor pairs"
    return plot_roc(result.curve.far, result.curve.tar, path, tar_at_far=result.tar_at_far,
                    note=note)
