"""Retrieval examples for visual reports, collected while the rank metrics stream.

:class:`ExampleCollector` watches the distance blocks that ``evaluate_features`` computes (its
``observe`` callback), so the plots show exactly the distances the metrics used (after
re-ranking / query expansion when enabled). It keeps, in memory bounded independently of the
gallery size:

* per query, its ``top_k`` nearest gallery items (junk excluded, as the metrics exclude it:
  same pid AND same camera), ties broken by gallery index like the metrics, and its nearest
  true match with that match's rank: ``O(Q * top_k)``;
* a uniform sample of genuine (same pid, other camera) and impostor (other pid) pair
  distances, ``max_pairs`` of each, for histograms and a sampled ROC curve.

Once AP is known, :meth:`ExampleCollector.report` picks the best and worst queries by AP and
returns a JSON-ready dict (see :func:`write_examples`, read back by ``reid.visualize``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reid.evaluation.positive_ranks import SamePidIndex
from reid.utils.io import atomic_write_json

DEFAULT_TOP_K = 8
DEFAULT_NUM_QUERIES = 3      # shown per figure (best, worst)
DEFAULT_MAX_PAIRS = 20_000   # sampled distances kept per kind (genuine, impostor)


class _Reservoir:
    """A uniform sample without replacement of at most ``size`` values from a stream.

    Every value gets a uniform random key; the ``size`` smallest keys form the sample. Values
    are pruned whenever more than twice ``size`` are held, so memory stays ``O(size)``.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.seen = 0
        self._values: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._held = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        self.seen += values.size
        self._values.append(values)
        self._keys.append(self.rng.random(values.size))
        self._held += values.size
        if self._held > 2 * self.size:
            self._prune()

    def sample(self) -> np.ndarray:
        self._prune()
        return self._values[0] if self._values else np.empty(0)

    def _prune(self) -> None:
        if not self._values:
            return
        values, keys = np.concatenate(self._values), np.concatenate(self._keys)
        if values.size > self.size:
            keep = np.argpartition(keys, self.size - 1)[:self.size]
            values, keys = values[keep], keys[keep]
        self._values, self._keys, self._held = [values], [keys], values.size


class ExampleCollector:
    """``observe(start, rows)`` with every block of query rows, in order; then ``report``."""

    def __init__(self, q_pids, g_pids, q_camids, g_camids, top_k: int = DEFAULT_TOP_K,
                 max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0) -> None:
        self.q_pids, self.g_pids = _ints(q_pids), _ints(g_pids)
        self.q_camids, self.g_camids = _ints(q_camids), _ints(g_camids)
        num_query, num_gallery = self.q_pids.size, self.g_pids.size
        self.top_k = max(1, min(int(top_k), num_gallery))
        self.index = SamePidIndex(self.q_pids, self.g_pids)
        self.top_index = np.full((num_query, self.top_k), -1, dtype=np.int64)
        self.top_dist = np.full((num_query, self.top_k), np.nan)
        self.first_match = np.full(num_query, -1, dtype=np.int64)   # gallery index
        self.first_match_dist = np.full(num_query, np.nan)
        self.first_match_rank = np.zeros(num_query, dtype=np.int64)  # 1-based; 0 = none
        self.rng = np.random.default_rng(seed)
        self.genuine = _Reservoir(max_pairs, self.rng)
        self.impostor = _Reservoir(max_pairs, self.rng)
        # Random gallery columns per query row: about twice the impostors the sample keeps.
        self._columns_per_row = max(1, math.ceil(2 * max_pairs / max(num_query, 1)))

    def observe(self, start: int, rows: np.ndarray) -> None:
        """Distances of queries ``start .. start + len(rows)`` to the whole gallery."""
        rows = np.asarray(rows)
        stop = start + rows.shape[0]
        q_pids, q_camids = self.q_pids[start:stop], self.q_camids[start:stop]
        members = self.index.members(slice(start, stop))  # same-pid gallery items, -1 pads
        in_pid = members >= 0
        safe = np.where(in_pid, members, 0)
        same_cam = self.g_camids[safe] == q_camids[:, None]
        junk, positive = in_pid & same_cam, in_pid & ~same_cam
        member_dist = np.take_along_axis(rows, safe, axis=1).astype(np.float64)
        self.genuine.add(member_dist[positive])
        self._sample_impostors(rows, q_pids)
        self._keep_top_k(start, rows, q_pids, q_camids, int(junk.sum(axis=1).max(initial=0)))
        self._keep_first_match(start, rows, members, positive, junk, member_dist)

    def _sample_impostors(self, rows: np.ndarray, q_pids: np.ndarray) -> None:
        cols = self.rng.integers(0, rows.shape[1], size=(rows.shape[0], self._columns_per_row))
        values = np.take_along_axis(rows, cols, axis=1)
        self.impostor.add(values[self.g_pids[cols] != q_pids[:, None]])

    def _keep_top_k(self, start: int, rows: np.ndarray, q_pids: np.ndarray,
                    q_camids: np.ndarray, max_junk: int) -> None:
        # The k nearest non-junk items are among the k + (junk count) nearest items.
        values, cand = _nearest(rows, min(rows.shape[1], self.top_k + max_junk))
        is_junk = ((self.g_pids[cand] == q_pids[:, None])
                   & (self.g_camids[cand] == q_camids[:, None]))
        keep = np.argsort(is_junk, axis=1, kind="stable")[:, :self.top_k]  # non-junk first
        kept_junk = np.take_along_axis(is_junk, keep, axis=1)
        index = np.where(kept_junk, -1, np.take_along_axis(cand, keep, axis=1))
        dist = np.where(kept_junk, np.nan, np.take_along_axis(values, keep, axis=1))
        stop = start + rows.shape[0]
        self.top_index[start:stop, :index.shape[1]] = index
        self.top_dist[start:stop, :dist.shape[1]] = dist

    def _keep_first_match(self, start: int, rows: np.ndarray, members: np.ndarray,
                          positive: np.ndarray, junk: np.ndarray, member_dist: np.ndarray) -> None:
        """The nearest true match of each query and its rank among the non-junk items."""
        has_match = positive.any(axis=1)
        if not has_match.any():
            return
        key = np.where(positive, member_dist, np.inf)
        # Nearest by (distance, gallery index): lexsort's last key is the primary one.
        pick = np.lexsort((np.where(positive, members, np.iinfo(np.int64).max), key),
                          axis=1)[:, 0]
        match = members[np.arange(len(rows)), pick]
        dist = key[np.arange(len(rows)), pick]
        for r in np.flatnonzero(has_match):
            row, d, g = rows[r], dist[r], match[r]
            before = np.count_nonzero(row < d) + np.count_nonzero(row[:g] == d)
            junk_d, junk_i = member_dist[r][junk[r]], members[r][junk[r]]
            before -= np.count_nonzero((junk_d < d) | ((junk_d == d) & (junk_i < g)))
            q = start + r
            self.first_match[q], self.first_match_dist[q] = g, d
            self.first_match_rank[q] = before + 1

    # ------------------------------------------------------------------ report
    def report(self, ap: np.ndarray, num_queries: int = DEFAULT_NUM_QUERIES,
               q_paths: Sequence[str] | None = None, g_paths: Sequence[str] | None = None) -> dict:
        """Best and worst queries by AP with their top-k, and the sampled pair distances.

        ``ap`` holds one AP per valid query (a true match in another camera), in query order,
        as ``evaluate_features`` returns it.
        """
        valid = np.flatnonzero(self.first_match >= 0)
        ap = np.asarray(ap, dtype=np.float64).ravel()
        if ap.size != valid.size:
            raise ValueError(f"got {ap.size} AP values for {valid.size} valid queries")
        best = valid[np.lexsort((valid, -ap))][:num_queries]
        worst = valid[np.lexsort((valid, ap))][:num_queries]
        ap_of = dict(zip(valid.tolist(), ap.tolist()))

        def describe(q: int) -> dict:
            return self._query_record(q, ap_of[q], q_paths, g_paths)

        return {
            "top_k": self.top_k, "num_query": int(self.q_pids.size),
            "num_gallery": int(self.g_pids.size),
            "best": [describe(int(q)) for q in best], "worst": [describe(int(q)) for q in worst],
            "distances": {"genuine": self.genuine.sample().tolist(),
                          "impostor": self.impostor.sample().tolist(),
                          "genuine_pairs": int(self.genuine.seen),
                          "impostor_pairs_sampled_from": int(self.impostor.seen)},
        }

    def _query_record(self, q: int, ap: float, q_paths, g_paths) -> dict:
        def item(g: int, dist: float) -> dict:
            return {"index": g, "path": g_paths[g] if g_paths is not None else None,
                    "pid": int(self.g_pids[g]), "camid": int(self.g_camids[g]),
                    "distance": float(dist), "match": bool(self.g_pids[g] == self.q_pids[q])}

        gallery = [item(int(g), d) for g, d in zip(self.top_index[q], self.top_dist[q]) if g >= 0]
        return {"index": q, "path": q_paths[q] if q_paths is not None else None,
                "pid": int(self.q_pids[q]), "camid": int(self.q_camids[q]), "ap": ap,
                "gallery": gallery,
                "first_match": {**item(int(self.first_match[q]), self.first_match_dist[q]),
                                "rank": int(self.first_match_rank[q])}}


def _nearest(rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and gallery indices of the ``width`` nearest items of each row, ordered by
    (distance, gallery index) like the metrics' ranking, ties at the cut included."""
    rows = np.ascontiguousarray(rows)
    values, cand = torch.topk(torch.from_numpy(rows), width, dim=1, largest=False, sorted=True)
    values, cand = values.numpy().copy(), cand.numpy().copy()
    cut = values[:, -1:]
    # topk picks arbitrary items among those tied with the last kept distance; the metrics'
    # order wants the lowest gallery indices. Rows with such ties are redone exactly.
    tied_in_row = np.count_nonzero(rows == cut, axis=1)
    for r in np.flatnonzero(tied_in_row > np.count_nonzero(values == cut, axis=1)):
        below = cand[r][values[r] < cut[r, 0]]
        tied = np.flatnonzero(rows[r] == cut[r, 0])[:width - below.size]
        cand[r] = np.concatenate([below, tied])
        values[r] = rows[r, cand[r]]
    order = np.lexsort((cand, values), axis=1)
    return (np.take_along_axis(values, order, axis=1).astype(np.float64),
            np.take_along_axis(cand, order, axis=1))


def write_examples(report: dict, path: str | Path) -> Path:
    """Write a :meth:`ExampleCollector.report` as JSON (atomically)."""
    return atomic_write_json(path, report)


def sampled_roc(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at every sampled distance taken as threshold (accept when distance < t).

    An estimate from sampled pairs, for reports when the exact ROC (TEST.ROC_ENABLED) was not
    computed.
    """
    genuine, impostor = np.sort(np.ravel(genuine)), np.sort(np.ravel(impostor))
    if genuine.size == 0 or impostor.size == 0:
        return np.zeros(1), np.zeros(1)
    thresholds = np.unique(np.concatenate([genuine, impostor, [np.inf]]))
    far = np.searchsorted(impostor, thresholds, side="left") / impostor.size
    tar = np.searchsorted(genuine, thresholds, side="left") / genuine.size
    return far, tar


def _ints(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.cpu().numpy()
    return np.asarray(values, dtype=np.int64).ravel()
