"""Brute-force candidate search in bfloat16: every gallery row scored, on the matrix units.

A faiss index saves work by scanning part of the gallery, and on re-id features (people who
look alike crowd the same cells) it loses positives to do so (benchmarks/RESULTS.md, "faiss
retrieval"). This search scans all of it instead and saves on the arithmetic: the products
run in bfloat16, which CPUs with AMX / AVX-512 BF16 and GPUs from Ampere on compute several
times faster than float32, and the top ``rescore x k`` rows of each query are then
re-scored exactly (float32, reid's distance) so the answer's order and distances are exact
for the rows it kept. What bfloat16 can cost is a row whose true score sits within
bfloat16's rounding (~0.4 % of the score) of the ``rescore x k``-th one: it may be swapped
with it. Squared L2 scores carry the gallery rows' squared norms, so with large norms
bfloat16's rounding is coarser against the gaps between neighbours than with cosine's unit
rows: re-score a wider list there (``rescore``). On a device without native bfloat16 the
products run in float32 (one warning): the same answer, without the speed.

Measured on Market+500k (3,368 x 515,913, 512-d, 2 cores; benchmarks/RESULTS.md, "faiss
retrieval"): the bfloat16 products take ~2.3 s (733 GFLOP/s against float32's 202 on this
AMX CPU, quiet), and choosing each row's best ``rescore x k`` among the scores (``topk``,
~1.2 ns a score) costs more than the products;
a two-step selection through block maxima was tried and was no faster (bfloat16 reductions
are not much cheaper than the selection itself).

Memory: one block of query rows x one chunk of gallery rows of scores (bfloat16), one chunk
of the gallery in bfloat16, and the ``Q x rescore x k`` best candidates so far; the gallery
is read once, chunk by chunk (a memory-mapped .npy larger than RAM is fine).
"""
from __future__ import annotations

import numpy as np
import torch

from reid.errors import ReidError
from reid.evaluation.distance import nearest_candidates
from reid.evaluation.extract import bf16_where_native
from reid.retrieval.sources import FeatureSource, from_arrays

BF16_SCAN = "bf16"  # the index type of evaluate_features / TEST.INDEX.TYPE that selects it
QUERY_ROWS = 1024     # query rows per product: larger blocks keep the matrix units busy
GALLERY_ROWS = 65536  # gallery rows per chunk: 1024 x 65536 bfloat16 scores = 128 MiB
RESCORE_ROWS = 256    # queries re-scored at once: 256 x 2k candidate rows of float32
DEFAULT_RESCORE = 2
SCORED_METRICS = ("cosine", "euclidean")  # reid's two distances (reid.evaluation.distance)


def bf16_top_k(queries: np.ndarray, gallery, k: int, metric: str = "cosine",
               device: torch.device | str = "cpu", rescore: int = DEFAULT_RESCORE
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, distances)``, ``Q x k``, ascending reid distances: each query's nearest
    ``gallery`` rows (a FeatureSource or a ``G x D`` matrix), selected in bfloat16 among all
    of them and re-scored exactly (module doc)."""
    if metric not in SCORED_METRICS:
        raise ReidError(f"bf16_top_k: unknown metric {metric!r}: expected one of "
                        f"{', '.join(SCORED_METRICS)}")
    source = gallery if isinstance(gallery, FeatureSource) else from_arrays(gallery)
    device = torch.device(device)
    dtype = torch.bfloat16 if bf16_where_native("TEST.INDEX.TYPE bf16", True, device) \
        else torch.float32
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(int(k), len(source))
    fetch = min(len(source), max(k, int(rescore) * k))
    candidates = _scan(_scoring_rows(queries, metric, device, dtype), source, fetch, metric,
                       dtype)
    ids = np.empty((len(queries), k), dtype=np.int64)
    distances = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), RESCORE_ROWS):
        rows = slice(start, start + RESCORE_ROWS)
        ids[rows], distances[rows] = _rescored(queries[rows], source, candidates[rows], k,
                                               metric)
    return ids, distances


def _scan(q: torch.Tensor, source: FeatureSource, fetch: int, metric: str,
          dtype: torch.dtype) -> np.ndarray:
    """The ``fetch`` best-scoring gallery ids of every row of ``q``. The gallery is read
    (and converted) once, chunk by chunk; each chunk meets every block of queries."""
    best_scores = torch.empty((len(q), 0), dtype=torch.float32, device=q.device)
    best_ids = torch.empty((len(q), 0), dtype=torch.int64, device=q.device)
    with torch.no_grad():
        for start, chunk in source.chunks(GALLERY_ROWS):
            g = _scoring_rows(chunk, metric, q.device, dtype, gallery=True)
            scores, ids = [], []
            for block in q.split(QUERY_ROWS):
                found = (block @ g.T).topk(min(fetch, len(chunk)), dim=1, sorted=False)
                scores.append(found.values.float())
                ids.append(found.indices + start)
            merged_scores = torch.cat([best_scores, torch.cat(scores)], 1)
            merged_ids = torch.cat([best_ids, torch.cat(ids)], 1)
            keep = merged_scores.topk(min(fetch, merged_scores.shape[1]), dim=1).indices
            best_scores, best_ids = merged_scores.gather(1, keep), merged_ids.gather(1, keep)
    return best_ids.cpu().numpy()


def _scoring_rows(rows: np.ndarray, metric: str, device: torch.device, dtype: torch.dtype,
                  gallery: bool = False) -> torch.Tensor:
    """Rows whose products rank like reid's distance, largest first. Cosine: unit rows.
    Squared L2: ``|q - g|^2 = |q|^2 + |g|^2 - 2 q.g`` ranks as ``q.g - |g|^2 / 2``, one
    product with a column appended (``-|g|^2 / 2`` to the gallery, ``1`` to the queries)."""
    x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)  # reid's guard: a zero row stays zero
    else:
        extra = -0.5 * x.pow(2).sum(1, keepdim=True) if gallery else torch.ones_like(x[:, :1])
        x = torch.cat([x, extra], 1)
    return x.to(dtype)


def _rescored(queries: np.ndarray, source: FeatureSource, candidates: np.ndarray, k: int,
              metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each query's candidates by the exact float32 distance."""
    vectors = np.asarray(source.vectors[candidates.ravel()], dtype=np.float32)
    return nearest_candidates(queries, candidates, vectors.reshape(*candidates.shape, -1), k,
                              metric)
