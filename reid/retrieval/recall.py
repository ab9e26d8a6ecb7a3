"""How close an index's answers are to exact search: recall@k of its top-k against the exact
top-k (reid's distance, brute force in blocks, never a full distance matrix)."""
from __future__ import annotations

import math

import numpy as np
import torch

from reid.evaluation.distance import DISTANCE_METRICS
from reid.retrieval.bf16_scan import merge_tile
from reid.retrieval.sources import CHUNK_ROWS, FeatureSource, read_only_tensor

RECALL_QUERIES = 1000  # gallery vectors used as queries when measuring a built index
RECALL_KS = (1, 10)


def exact_top_k(queries: np.ndarray, gallery, k: int, metric: str = "cosine"
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, distances)``, ``Q x k``, ascending: the exact nearest rows of ``gallery``
    (anything with ``chunks()`` of float32 rows in id order, e.g. a FeatureSource)."""
    reference = ExactTopK(queries, k, metric)
    reference.add_all(gallery)
    return reference.result()


class ExactTopK:
    """Each query's exact ``k`` nearest rows, from gallery chunks as they come: by
    :func:`exact_top_k`'s own pass, or fed by a scan that reads the gallery anyway (the
    bfloat16 scan: one pass over a memory-mapped gallery instead of two)."""

    def __init__(self, queries: np.ndarray, k: int, metric: str = "cosine") -> None:
        self.distance = DISTANCE_METRICS.get(metric)
        self.k = int(k)
        self.queries = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        # the k best so far as scores (negated distances, largest first) for merge_tile
        self.best_scores = torch.full((len(self.queries), self.k), -math.inf)
        self.best_ids = torch.full((len(self.queries), self.k), -1, dtype=torch.int64)
        self.seen = 0

    def add(self, start: int, chunk: np.ndarray, gallery_terms: torch.Tensor | None = None
            ) -> None:
        """Gallery rows ``start, start + 1, ...`` (float32); ``gallery_terms``: the metric's
        per-row terms of ``chunk`` (reid.evaluation.distance) when the caller has them."""
        with torch.no_grad():
            rows = read_only_tensor(chunk)
            if gallery_terms is None:
                scores = self.distance(self.queries, rows).neg_()
            else:
                scores = self.distance.block(self.queries, rows, gallery_terms).neg_()
            self.best_scores, self.best_ids = merge_tile(self.best_scores, self.best_ids,
                                                         scores, start)
        self.seen += len(chunk)

    def add_all(self, gallery) -> None:
        """Every row of ``gallery`` (anything with ``chunks()``, e.g. a FeatureSource)."""
        for start, chunk in _chunks(gallery):
            self.add(start, chunk)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, distances)`` of the rows added so far, ascending."""
        kept = min(self.k, self.seen)
        return self.best_ids[:, :kept].numpy(), (-self.best_scores[:, :kept]).numpy()


def _chunks(gallery):
    if isinstance(gallery, FeatureSource):
        yield from gallery.chunks(CHUNK_ROWS)
        return
    start = 0
    for chunk in gallery.chunks(CHUNK_ROWS):
        yield start, chunk
        start += len(chunk)


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of ``|found[:k] & exact[:k]| / k``."""
    hits = [len(np.intersect1d(a[:k], b[:k])) for a, b in zip(found, exact)]
    return float(np.mean(hits) / k)


def recall_against_exact(gallery, source: FeatureSource, queries: int = RECALL_QUERIES,
                         ks: tuple[int, ...] = RECALL_KS, seed: int = 0) -> dict[str, float]:
    """``{"recall_at_1": .., "recall_at_10": ..}`` (MLflow-safe names) of ``gallery`` on a random sample of its own
    vectors used as queries (a built index measured where it stands)."""
    k = min(max(ks), len(source))
    rows = np.sort(np.random.default_rng(seed).choice(len(source), min(queries, len(source)),
                                                      replace=False))
    sample = np.ascontiguousarray(source.vectors[rows], dtype=np.float32)
    found = gallery.search(sample, k).ids
    exact, _ = exact_top_k(sample, source, k, gallery.metric)
    return {f"recall_at_{n}": recall_at(found, exact, n) for n in ks if n <= k}
