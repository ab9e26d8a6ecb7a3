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

Where the time goes, Market+500k (3,368 x 515,913, 512-d, 2 cores; benchmarks/RESULTS.md,
"faiss retrieval"): the bfloat16 products ~0.75 s (0.43 ns a score, ~2.4 TFLOP/s on this
AMX CPU, into one reused score buffer: a fresh 128 MiB tensor per product costs page faults
that doubled it; a gallery side that is not a multiple of 1,024 rows costs 1.7x, hence the
padded last chunk), choosing each query's best ``rescore x k`` ~0.55 s (:func:`merge_tile`:
lane maxima, ~0.08 ns a score, instead of ``topk`` over every score, ~1.1 ns), casting the
gallery ~0.15 s (normalised in cache-sized blocks), the exact re-scoring ~0.13 s (in
cache-sized blocks; 0.2 s in blocks of 256 queries). It was 5.7 s with ``topk`` and fresh buffers.

Memory: one block of query rows x one chunk of gallery rows of scores (bfloat16), one chunk
of the gallery in bfloat16, and the ``Q x rescore x k`` best candidates so far; the gallery
is read once, chunk by chunk (a memory-mapped .npy larger than RAM is fine).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from reid.errors import ReidError
from reid.evaluation.distance import inverse_norms, nearest_candidates
from reid.evaluation.extract import bf16_where_native
from reid.retrieval.sources import (FeatureSource, from_arrays, gather_rows,
                                     queries_per_gather, read_only_tensor)

BF16_SCAN = "bf16"  # the index type of evaluate_features / TEST.INDEX.TYPE that selects it
QUERY_ROWS = 2048     # query rows per product at most: larger blocks keep the matrix units busy
GALLERY_ROWS = 65536  # gallery rows per chunk: 2048 x 65536 bfloat16 scores = 256 MiB
# oneDNN's bfloat16 product is ~1.7x slower per score when the gallery side is not a multiple
# of 1,024 rows (1,684 x 57,161: 0.78 ns a score, x 57,344: 0.39): a short last chunk is
# padded with zero rows, whose scores are never read
ROW_MULTIPLE = 1024
CAST_ROWS = 8192  # gallery rows normalised at once before their cast (16 MiB of float32)
LANE = 32  # scores per lane of merge_tile (16 to 128 measured: 32 the fastest)
HEAVY_LANES = 4  # a row selecting more than 4 k lanes of a tile is read by topk instead
DEFAULT_RESCORE = 2
SCORED_METRICS = ("cosine", "euclidean")  # reid's two distances (reid.evaluation.distance)


def bf16_top_k(queries: np.ndarray, gallery, k: int, metric: str = "cosine",
               device: torch.device | str = "cpu", rescore: int = DEFAULT_RESCORE,
               also=None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, distances)``, ``Q x k``, ascending reid distances: each query's nearest
    ``gallery`` rows (a FeatureSource or a ``G x D`` matrix), selected in bfloat16 among all
    of them and re-scored exactly (module doc). ``also``: anything with ``add(start,
    float32 rows, gallery terms)`` that the gallery's chunks are handed to as they are read
    (a reid.retrieval.recall.ExactTopK: the exact reference in the same pass; the terms are
    cosine's inverse norms, known from the scan, or None)."""
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
    candidates, norms = _scan(_scoring_rows(queries, metric, device, dtype), source, fetch,
                              metric, dtype, also)
    ids = np.empty((len(queries), k), dtype=np.int64)
    distances = np.empty((len(queries), k), dtype=np.float32)
    buffers = _Buffers(torch.device("cpu"))
    per_block = queries_per_gather(candidates.shape[1], source.dim)
    for start in range(0, len(queries), per_block):
        rows = slice(start, start + per_block)
        ids[rows], distances[rows] = _rescored(queries[rows], source, candidates[rows], k,
                                               metric, buffers, norms)
    return ids, distances


def _scan(q: torch.Tensor, source: FeatureSource, fetch: int, metric: str,
          dtype: torch.dtype, also=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``fetch`` best-scoring gallery ids of every row of ``q``, and for cosine every
    gallery row's norm (re-scoring needs them). The gallery is read (and converted) once,
    chunk by chunk; each chunk meets every block of queries, and each block keeps its rows'
    best so far (:func:`merge_tile`). ``also``: see :func:`bf16_top_k`."""
    best_scores = torch.full((len(q), fetch), -math.inf, device=q.device)
    best_ids = torch.full((len(q), fetch), -1, dtype=torch.int64, device=q.device)
    buffers = _Buffers(q.device)
    # blocks of equal size: Market's 3,368 queries as 2 x 1,684, not 3 x 1,024 + 296 (the
    # scan took 2.42 s against 2.64 s; fewer, equal products)
    rows_per_block = -(-len(q) // -(-len(q) // QUERY_ROWS))
    norms = np.empty(len(source), dtype=np.float32) if metric == "cosine" else None
    # every product the same width (one oneDNN kernel; multi-chunk galleries pad their last)
    width = GALLERY_ROWS if len(source) > GALLERY_ROWS else padded_rows(len(source))
    with torch.no_grad():
        for start, chunk in source.chunks(GALLERY_ROWS):
            chunk_norms = None if norms is None else norms[start:start + len(chunk)]
            g = _scoring_rows(chunk, metric, q.device, dtype, gallery=True, buffers=buffers,
                              norms=chunk_norms, padded_to=max(width, len(chunk)))
            if also is not None:  # cosine's gallery terms (inverse norms) are known by now
                also.add(start, chunk, None if chunk_norms is None else
                         torch.from_numpy(chunk_norms).reciprocal())
            for first in range(0, len(q), rows_per_block):
                block = q[first:first + rows_per_block]
                tile = torch.mm(block, g.T, out=buffers.take("tile", (len(block), len(g)),
                                                             dtype))
                rows = slice(first, first + len(block))
                best_scores[rows], best_ids[rows] = merge_tile(
                    best_scores[rows], best_ids[rows], tile[:, :len(chunk)], start)
    return best_ids.cpu().numpy(), norms


def padded_rows(rows: int) -> int:
    """``rows`` rounded up to :data:`ROW_MULTIPLE`: the fast width of a bfloat16 product."""
    return -(-rows // ROW_MULTIPLE) * ROW_MULTIPLE


def merge_tile(best_scores: torch.Tensor, best_ids: torch.Tensor, tile: torch.Tensor,
               first_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` best (scores descending, float32, ``-inf`` / id -1 where fewer were
    seen) after one more ``tile`` of scores, whose column ``j`` is id ``first_id + j``.

    ``topk`` over every score costs more than the products (~1 ns a score). Instead the
    tile's columns are dealt into lanes of ``LANE`` scores (column ``c`` of lane ``c mod L``)
    and only lanes whose maximum reaches the row's threshold are read: the threshold is the
    larger of the row's ``k``-th best so far and the ``k``-th largest lane maximum (``k``
    lanes each hold a score at least that large), so it never exceeds the row's final
    ``k``-th best and no score that belongs to the answer is skipped. After the first tiles
    the threshold is high and a handful of lanes per row is read."""
    k = best_scores.shape[1]
    rows, columns = tile.shape
    lane = min(LANE, columns // k)
    if lane < 2:  # too few columns per kept score for lanes to prune anything
        ids = torch.arange(columns, device=tile.device) + first_id
        return _keep_best(best_scores, best_ids, tile.float(), ids.expand(rows, -1))
    lanes = columns // lane
    body = tile[:, :lane * lanes].unflatten(1, (lane, lanes))  # [row, j, c]: column c + j L
    maxima = _lane_maxima(body)
    threshold = _threshold(best_scores[:, -1], maxima, k)
    inexact = threshold <= 0
    if inexact.any() and body.dtype == torch.bfloat16:  # see _lane_maxima
        maxima[inexact] = body[inexact].amax(1)
        threshold[inexact] = _threshold(best_scores[inexact, -1], maxima[inexact], k)
    row, column = _at_least(maxima, threshold).nonzero(as_tuple=True)  # ordered by row
    # a row selecting far more lanes than it keeps scores is a row of ties (a zero query
    # scores 0 everywhere): its scores are chosen by topk, not gathered lane by lane
    heavy = (torch.bincount(row, minlength=rows) > HEAVY_LANES * k).nonzero()[:, 0]
    if len(heavy):
        light = ~torch.isin(row, heavy)
        row, column = row[light], column[light]
    values = body[row, :, column]                               # P x lane
    which, place = _at_least(values, threshold[row]).nonzero(as_tuple=True)
    survivors = (row[which], values[which, place].float(),
                 column[which] + lanes * place + first_id)
    if len(heavy):
        survivors = _with_rows_of_ties(survivors, heavy, tile[heavy, :lane * lanes], k,
                                       first_id)
    tail = tile[:, lane * lanes:].float()  # the columns that fill no lane (< lane)
    tail_ids = torch.arange(lane * lanes, columns, device=tile.device) + first_id
    extra_scores, extra_ids = _dense(survivors, rows)
    return _keep_best(best_scores, best_ids, torch.cat([extra_scores, tail], 1),
                      torch.cat([extra_ids, tail_ids.expand(rows, -1)], 1))


def _with_rows_of_ties(survivors, rows: torch.Tensor, scores: torch.Tensor, k: int,
                       first_id: int):
    """``survivors`` plus the ``k`` best of each of ``rows`` (their ``scores``), still
    ordered by row."""
    top = scores.float().topk(k, dim=1)
    row = torch.cat([survivors[0], rows.repeat_interleave(k)])
    order = torch.sort(row, stable=True).indices
    return (row[order], torch.cat([survivors[1], top.values.ravel()])[order],
            torch.cat([survivors[2], top.indices.ravel() + first_id])[order])


def _lane_maxima(body: torch.Tensor) -> torch.Tensor:
    """Each lane's maximum (``rows x lanes``, in the tile's dtype), exact where it is
    positive. bfloat16 maxima are taken on the bit patterns read as int16, ~3x faster on the
    CPU, and compared as such (:func:`_at_least`): positive
    values order like their bits and every negative one reads below every positive one, so
    a positive maximum is exact and a negative one is at most the true maximum (the
    caller recomputes rows whose threshold is not positive)."""
    if body.dtype != torch.bfloat16:
        return body.amax(1)
    return body.view(torch.int16).amax(1).view(torch.bfloat16)


def _threshold(kth_best: torch.Tensor, maxima: torch.Tensor, k: int) -> torch.Tensor:
    """The larger of the ``k``-th best so far and the ``k``-th largest lane maximum; the
    second only where the first is not set yet (after the first tiles it is the larger)."""
    if bool(torch.isfinite(kth_best).all()):
        return kth_best.clone()
    return torch.maximum(kth_best, maxima.topk(k, dim=1).values[:, -1].float())


def _at_least(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``scores >= threshold`` per row; on the int16 bit patterns (faster) where that is
    exact: bfloat16 scores against positive thresholds (see _lane_maxima)."""
    if scores.dtype == torch.bfloat16 and bool((threshold > 0).all()):
        bits = threshold.to(torch.bfloat16).view(torch.int16)
        return scores.view(torch.int16) >= bits[:, None]
    return scores >= threshold[:, None]


def _dense(survivors, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, score, id)`` triples, rows ascending, as ``rows x width`` matrices padded
    with ``-inf`` / -1 (width: the most any row has)."""
    row, scores, ids = survivors
    counts = torch.bincount(row, minlength=rows)
    width = int(counts.max()) if len(row) else 0
    place = torch.arange(len(row), device=row.device) - (counts.cumsum(0) - counts)[row]
    dense_scores = torch.full((rows, width), -math.inf, device=row.device)
    dense_ids = torch.full((rows, width), -1, dtype=torch.int64, device=row.device)
    dense_scores[row, place], dense_ids[row, place] = scores, ids
    return dense_scores, dense_ids


def _keep_best(best_scores, best_ids, scores, ids) -> tuple[torch.Tensor, torch.Tensor]:
    merged_scores = torch.cat([best_scores, scores], 1)
    top = merged_scores.topk(best_scores.shape[1], dim=1)  # sorted: [:, -1] is the k-th
    return top.values, torch.cat([best_ids, ids], 1).gather(1, top.indices)


def _scoring_rows(rows: np.ndarray, metric: str, device: torch.device, dtype: torch.dtype,
                  gallery: bool = False, buffers: "_Buffers | None" = None,
                  norms: np.ndarray | None = None, padded_to: int | None = None
                  ) -> torch.Tensor:
    """Rows whose products rank like reid's distance, largest first. Cosine: unit rows.
    Squared L2: ``|q - g|^2 = |q|^2 + |g|^2 - 2 q.g`` ranks as ``q.g - |g|^2 / 2``, one
    product with a column appended (``-|g|^2 / 2`` to the gallery, ``1`` to the queries).
    With ``buffers`` the result lives in a reused tensor (valid until the next call);
    ``norms`` (cosine) receives the rows' L2 norms; ``padded_to``: that many rows, zeros
    after ``rows``."""
    buffers = buffers or _Buffers(device)
    x = read_only_tensor(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
    if metric == "cosine":  # reid's guarded norm: a zero row stays zero
        scale = inverse_norms(x)
        if norms is not None:
            norms[:] = scale.reciprocal().cpu().numpy()
        width = x.shape[1]
    else:
        extra = -0.5 * x.pow(2).sum(1, keepdim=True) if gallery else torch.ones_like(x[:, :1])
        x, width = torch.cat([x, extra], 1), x.shape[1] + 1
    out = buffers.take("scoring", (padded_to or len(x), width), dtype)
    out[len(x):] = 0
    if metric != "cosine":
        out[:len(x)] = x
        return out
    # scaled into a cache-sized float32 block, then cast: one pass over memory fewer than
    # scaling the whole chunk first (65,536 x 512 rows: 12 ms against 20)
    unit = buffers.take("unit", (min(CAST_ROWS, len(x)), width), x.dtype)
    for start in range(0, len(x), CAST_ROWS):
        stop = min(start + CAST_ROWS, len(x))
        part = unit[:stop - start]
        torch.mul(x[start:stop], scale[start:stop, None], out=part)
        out[start:stop] = part
    return out


class _Buffers:
    """Work tensors reused from chunk to chunk: a fresh large tensor each time costs page
    faults (on the CPU they doubled the time of the products and of the conversions)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.held = device, {}

    def take(self, name: str, shape, dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape)
        held = self.held.get(name)
        if held is None or held.numel() < size or held.dtype != dtype:
            held = self.held[name] = torch.empty(size, dtype=dtype, device=self.device)
        return held[:size].view(shape)


def _rescored(queries: np.ndarray, source: FeatureSource, candidates: np.ndarray, k: int,
              metric: str, buffers: _Buffers, norms: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each query's candidates by the exact float32 distance
    (``norms``: every gallery row's, for cosine)."""
    flat = np.maximum(candidates, 0)
    vectors = gather_rows(source.vectors, flat.ravel(),
                          buffers.take("rows", (flat.size, source.dim), torch.float32).numpy())
    return nearest_candidates(queries, candidates, vectors.reshape(*candidates.shape, -1), k,
                              metric, None if norms is None else norms[flat])
