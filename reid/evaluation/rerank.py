"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in O(N * k1 * k2) memory, never O(N^2).

The numbers are those of the authors' published reference code (also FastReID's
``re_ranking``), over the ``N = Q + G`` query and gallery items together:

1. original distance ``D(i, j) = d(i, j) ** 2`` with ``d`` the metric's distance (``cosine``:
   ``1 - cos``; ``euclidean``: the squared Euclidean distance, as in
   ``reid.evaluation.distance``), each row divided by its own maximum over all ``N`` items;
2. ``R(i)``: the items among ``i``'s ``k1 + 1`` nearest (itself included) that also have ``i``
   among their own ``k1 + 1`` nearest;
3. for each candidate ``c`` in ``R(i)``, its own reciprocal set ``H(c)`` (``round(k1 / 2) + 1``
   nearest, ``round`` half to even as numpy's) is merged into ``R(i)`` when more than 2/3 of
   ``H(c)`` lies in ``R(i)``;
4. ``V(i, j) = exp(-D(i, j))`` over the merged set, normalised to sum 1 per row;
5. local query expansion (when ``k2 > 1``): ``V(i)`` becomes the mean of the rows of its ``k2``
   nearest items (itself included);
6. ``Jaccard(q, g) = 1 - m / (2 - m)`` with ``m = sum_k min(V(q, k), V(g, k))``;
7. ``final = (1 - lambda) * Jaccard + lambda * D(q, g)``.

Nothing ``N x N`` is ever held: the neighbour lists and row maxima come from one streamed exact
search (``reid.evaluation.neighbors``), ``V`` is stored sparse (about ``N * k1 * k2`` entries),
and the Jaccard term is computed for one block of queries at a time through an inverted index
over the gallery's columns of ``V``. Each block's ``D(q, g)`` is recomputed from the features.

Ties between equal distances may order neighbours differently from the reference's
``argsort``, which leaves the result unchanged unless the tie straddles a neighbour-list cut.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from reid.errors import ReidError
from reid.evaluation.neighbors import (METRIC_SPACES, MetricSpace, all_pairs_knn, pick_device,
                                       query_gallery_features)
from reid.evaluation.sparse_encoding import Csr, InvertedIndex, concatenated_ranges

logger = logging.getLogger(__name__)
T, R = TypeVar("T"), TypeVar("R")

# Work-size bounds (elements) for the vectorised numpy steps; they cap the scratch memory.
_CHUNK_ELEMENTS = 1 << 22
_PAIR_CHUNK_ROWS = 1 << 14
# Cells of one part of a query block (its float64 overlap array is 8 MB): small enough for
# the allocator to reuse freed memory (arrays of 32 MB and more are fresh pages every time).
_PART_CELLS = 1 << 20
# The neighbour search computes every query x gallery distance anyway; they are kept for the
# final combination when they fit in this many bytes (Market-sized: 214 MB), and recomputed
# per query block otherwise (MSMT17-sized: 3.8 GB would break the memory bound).
_KEEP_DISTANCES_BYTES = 1 << 30


def rerank_distance(q_feats, g_feats, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                    metric: str = "cosine", *, device: str | torch.device | None = None
                    ) -> np.ndarray:
    """The ``Q x G`` float32 re-ranked distance, for problems whose ``Q x G`` fits in memory.

    ``device`` runs the neighbour search and distances there (default: CUDA when available).
    Use ``ReRanker(...).blocks(n)`` to stream query blocks instead.
    """
    reranker = ReRanker(q_feats, g_feats, k1=k1, k2=k2, lambda_value=lambda_value,
                        metric=metric, device=device)
    out = np.empty((reranker.num_query, reranker.num_gallery), dtype=np.float32)
    block = max(1, _CHUNK_ELEMENTS // max(reranker.num_gallery, 1))
    for start, stop, dist in reranker.blocks(block):
        out[start:stop] = dist
    return out


class ReRanker:
    """Re-ranked query x gallery distances, one block of queries at a time.

    Construction does the neighbour search and builds the sparse encoding (memory
    ``O(N * k1 * k2)`` plus the features); ``blocks`` then yields the same numbers as
    ``rerank_distance`` without ever holding more than one block of rows.
    """

    def __init__(self, q_feats, g_feats, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 metric: str = "cosine", *, device: str | torch.device | None = None) -> None:
        self._space: MetricSpace = METRIC_SPACES.get(metric)
        q, g = query_gallery_features(q_feats, g_feats, "re-ranking")
        num = q.shape[0] + g.shape[0]
        _check_parameters(k1, k2, lambda_value, num)
        self.num_query, self.num_gallery = q.shape[0], g.shape[0]
        self.lambda_value = float(lambda_value)
        self._feats = self._space.prepare(torch.cat([q, g]).to(pick_device(device)))
        del q, g

        started = time.perf_counter()
        ranked, ranked_dist = self._search(max(k1 + 1, k2))
        searched = time.perf_counter()
        encoding = self._encode(ranked, ranked_dist, k1, k2)
        self._queries = encoding.row_slice(0, self.num_query)
        self._gallery_columns = InvertedIndex.of_rows(encoding, self.num_query, num)
        logger.debug("re-ranking %d items: neighbour search %.1f s, encoding %.1f s "
                     "(%d non-zeros)", num, searched - started,
                     time.perf_counter() - searched, encoding.nnz)

    def _search(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Step 1: each item's ``k`` nearest items and distances ``d``; sets the row maxima."""
        kept = None
        if self.num_query * self.num_gallery * 4 <= _KEEP_DISTANCES_BYTES:
            kept = _QueryGalleryTiles(self.num_query, self.num_gallery, self._feats.device)
        nbrs = all_pairs_knn(self._feats, k, self._space, on_tile=kept)
        self._kept = kept
        # D = d ** 2 is increasing in d >= 0, so the row maximum of D is the farthest d squared.
        self._row_max = nbrs.farthest.double().cpu().numpy() ** 2
        if not np.all(self._row_max > 0):
            raise ReidError("re-ranking needs distinct features: some item is at distance 0 "
                            "from every item (all features identical?)")
        return nbrs.indices.cpu().numpy(), nbrs.distances.double().cpu().numpy()

    def _encode(self, ranked: np.ndarray, ranked_dist: np.ndarray, k1: int, k2: int) -> Csr:
        """Steps 2-5: the sparse, locally expanded k-reciprocal encoding ``V``."""
        num = ranked.shape[0]
        rows, cols = _expansion_pairs(ranked, k1)
        dist = self._pair_distances(rows, cols, ranked, ranked_dist)
        weights = np.exp(-(dist * dist) / self._row_max[rows])
        weights /= np.bincount(rows, weights=weights, minlength=num)[rows]
        encoding = Csr.from_sorted_pairs(rows, cols, weights, num)
        return _average_rows(encoding, ranked[:, :k2]) if k2 > 1 else encoding

    def blocks(self, block_size: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(q_start, q_stop, dist)`` with ``dist`` the float32 rows of those queries."""
        if int(block_size) < 1:
            raise ReidError(f"ReRanker.blocks: block_size must be >= 1, got {block_size}")
        for start in range(0, self.num_query, int(block_size)):
            stop = min(start + int(block_size), self.num_query)
            yield start, stop, self._block(start, stop)

    def _block(self, start: int, stop: int) -> np.ndarray:
        lam = self.lambda_value
        out = np.empty((stop - start, self.num_gallery), dtype=np.float32)
        # Without kept distances, one product for the whole block (GEMM likes big blocks).
        computed = (self._normalised_distance(start, stop)
                    if lam > 0 and self._kept is None else None)

        def fill(part: tuple[int, int]) -> None:
            # In place: at Market size a block is ~1,000 x 16,000 cells, and every temporary
            # array of that size costs more in page faults than in arithmetic.
            lo, hi = part
            overlap = self._overlap(lo, hi)
            jaccard = np.subtract(2.0, overlap)
            np.divide(overlap, jaccard, out=jaccard)
            np.subtract(1.0, jaccard, out=jaccard)  # 1 - m / (2 - m)
            rows = out[lo - start:hi - start]
            if lam == 0:
                rows[...] = jaccard
                return
            if computed is not None:
                np.multiply(computed[lo - start:hi - start], lam, out=rows)
            else:
                self._kept_original_into(rows, lo, hi, lam)
            jaccard *= 1.0 - lam
            rows += jaccard

        # Each part writes its own rows of ``out``.
        max_rows = max(1, _PART_CELLS // self.num_gallery)
        _in_threads(fill, _bounded_row_ranges(self._queries, self._gallery_columns, start, stop,
                                              max_rows))
        return out

    def _kept_original_into(self, rows: np.ndarray, start: int, stop: int, lam: float) -> None:
        """``rows = lam * D(q, g)`` for queries ``start..stop-1`` from the kept distances."""
        dist = self._kept.dist[start:stop]
        scale = torch.from_numpy(lam / self._row_max[start:stop, None]).float()
        target = torch.from_numpy(rows)
        with torch.no_grad():
            if dist.device.type == "cpu":
                torch.mul(dist, dist, out=target)
            else:
                target.copy_(dist.square().cpu())
            target.mul_(scale)

    def _overlap(self, start: int, stop: int) -> np.ndarray:
        """``m = sum_k min(V(q, k), V(g, k))`` through the gallery's inverted index."""
        query_rows, query_cols, query_vals = self._queries.entries(start, stop)
        index = self._gallery_columns
        first, count = index.start[query_cols], index.count[query_cols]
        positions = concatenated_ranges(first, count)
        owner = np.repeat(np.arange(query_cols.size), count)
        mins = np.minimum(query_vals[owner], index.values[positions])
        cells = (query_rows[owner] - start) * self.num_gallery + index.rows[positions]
        total = np.bincount(cells, weights=mins, minlength=(stop - start) * self.num_gallery)
        return total.reshape(stop - start, self.num_gallery)

    def _normalised_distance(self, start: int, stop: int) -> np.ndarray:
        """float32 ``D(q, g) = d(q, g) ** 2 / max_j D(q, j)`` for queries ``start..stop-1``."""
        row_max = torch.from_numpy(self._row_max[start:stop, None]).to(self._feats.device)
        with torch.no_grad():
            if self._kept is not None:
                dist = self._kept.dist[start:stop].square()
            else:
                dist = self._space.block(self._feats[start:stop],
                                         self._feats[self.num_query:]).pow_(2)
            dist = dist.div_(row_max.float())
        return dist.cpu().numpy()

    def _pair_distances(self, rows: np.ndarray, cols: np.ndarray, ranked: np.ndarray,
                        ranked_dist: np.ndarray) -> np.ndarray:
        """``d(i, j)`` per pair: from the neighbour lists when ``j`` is there, else computed."""
        dist = np.empty(rows.size, dtype=np.float64)
        missing = []
        step = max(1, _CHUNK_ELEMENTS // ranked.shape[1])
        for lo in range(0, rows.size, step):
            r, c = rows[lo:lo + step], cols[lo:lo + step]
            match = ranked[r] == c[:, None]
            dist[lo:lo + step] = ranked_dist[r, match.argmax(axis=1)]
            missing.append(lo + np.flatnonzero(~match.any(axis=1)))
        missing = np.concatenate(missing)
        dist[missing] = self._computed_distances(rows[missing], cols[missing])
        return dist

    def _computed_distances(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.empty(rows.size, dtype=np.float64)
        device = self._feats.device
        with torch.no_grad():
            for lo in range(0, rows.size, _PAIR_CHUNK_ROWS):
                i = torch.from_numpy(rows[lo:lo + _PAIR_CHUNK_ROWS]).to(device)
                j = torch.from_numpy(cols[lo:lo + _PAIR_CHUNK_ROWS]).to(device)
                out[lo:lo + i.numel()] = self._space.paired(self._feats[i], self._feats[j]).cpu()
        return out


def _expansion_pairs(ranked: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-3: the merged k-reciprocal set of every item, as sorted (row, col) pairs."""
    reciprocal = _reciprocal_lists(ranked, k1 + 1)
    half = _reciprocal_lists(ranked, int(np.around(k1 / 2.0)) + 1)
    width = reciprocal.shape[1] * (1 + half.shape[1])
    chunk = max(1, _CHUNK_ELEMENTS // (width * reciprocal.shape[1]))

    def pairs(lo: int) -> tuple[np.ndarray, np.ndarray]:
        row_ids, members = _unique_per_row(_merge_candidates(reciprocal[lo:lo + chunk], half))
        return row_ids + lo, members

    rows, cols = zip(*_in_threads(pairs, range(0, ranked.shape[0], chunk)))
    return np.concatenate(rows), np.concatenate(cols)


def _reciprocal_lists(ranked: np.ndarray, k: int) -> np.ndarray:
    """``N x k``: ``ranked[i, t]`` where ``i`` is also among its top ``k``, else -1."""
    top = ranked[:, :k]
    out = np.full_like(top, -1)
    chunk = max(1, _CHUNK_ELEMENTS // (k * k))
    for lo in range(0, top.shape[0], chunk):
        items = np.arange(lo, min(lo + chunk, top.shape[0]))
        back = top[top[items]]  # rows x k x k: each neighbour's own top k
        mutual = (back == items[:, None, None]).any(axis=2)
        out[items] = np.where(mutual, top[items], -1)
    return out


def _merge_candidates(reciprocal: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Rows of ``R(i)`` followed by each candidate's ``H(c)`` that overlaps ``R(i)`` > 2/3."""
    valid = reciprocal >= 0
    candidate_sets = np.where(valid[:, :, None], half[np.maximum(reciprocal, 0)], -1)
    in_set = candidate_sets >= 0
    inside = (candidate_sets[..., None] == reciprocal[:, None, None, :]).any(axis=3) & in_set
    # "more than 2/3 of H(c)", in integers: 3 * overlap > 2 * |H(c)|.
    accept = valid & (3 * inside.sum(axis=2) > 2 * in_set.sum(axis=2))
    merged = np.where(accept[:, :, None], candidate_sets, -1)
    return np.concatenate([reciprocal, merged.reshape(len(reciprocal), -1)], axis=1)


def _unique_per_row(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, value) of the distinct non-negative values of each row, sorted by row then value."""
    values = np.sort(values, axis=1)
    keep = values >= 0
    keep[:, 1:] &= values[:, 1:] != values[:, :-1]
    row_ids = np.nonzero(keep)[0]
    return row_ids, values[keep]


def _average_rows(encoding: Csr, neighbours: np.ndarray) -> Csr:
    """Step 5: row ``i`` becomes the mean of the rows ``neighbours[i]``."""
    num, k2 = neighbours.shape
    chunk = max(1, _CHUNK_ELEMENTS // (k2 * max(1, encoding.nnz // max(num, 1))))
    row_lengths = np.diff(encoding.indptr)

    def averaged(lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        picked = neighbours[lo:lo + chunk].ravel()
        first, count = encoding.indptr[picked], row_lengths[picked]
        positions = concatenated_ranges(first, count)
        owner = np.repeat(np.repeat(np.arange(lo, lo + len(picked) // k2), k2), count)
        keys, inverse = np.unique(owner * num + encoding.indices[positions],
                                  return_inverse=True)
        return keys // num, keys % num, np.bincount(inverse, weights=encoding.data[positions]) / k2

    rows, cols, vals = zip(*_in_threads(averaged, range(0, num, chunk)))
    return Csr.from_sorted_pairs(np.concatenate(rows), np.concatenate(cols),
                                  np.concatenate(vals), num)


class _QueryGalleryTiles:
    """Collects the query x gallery part of the neighbour search's distance tiles."""

    def __init__(self, num_query: int, num_gallery: int, device: torch.device) -> None:
        self.num_query = num_query
        self.dist = torch.empty(num_query, num_gallery, device=device)

    def __call__(self, row_start: int, col_start: int, tile: torch.Tensor) -> None:
        # Items are queries then gallery, so a query x gallery pair (row < col) always lies on
        # or above the diagonal: in the tiles as computed, never only in their transposes.
        q = self.num_query
        row_stop = min(row_start + tile.shape[0], q)
        col_first, col_stop = max(col_start, q), col_start + tile.shape[1]
        if row_start < row_stop and col_first < col_stop:
            self.dist[row_start:row_stop, col_first - q:col_stop - q] = \
                tile[:row_stop - row_start, col_first - col_start:]


def _bounded_row_ranges(queries: Csr, index: InvertedIndex, start: int, stop: int,
                        max_rows: int) -> Iterator[tuple[int, int]]:
    """Split query rows ``start..stop-1`` into parts of at most ``max_rows`` rows whose
    overlap work also stays bounded."""
    work_per_entry = index.count[queries.indices[queries.indptr[start]:queries.indptr[stop]]]
    per_entry_end = np.cumsum(work_per_entry)
    row_ends = queries.indptr[start + 1:stop + 1] - queries.indptr[start]
    row_work = np.concatenate([[0], per_entry_end])[row_ends]
    lo, done = start, 0
    while lo < stop:
        # At least one row per part; then as many as fit in the budget.
        hi = start + int(np.searchsorted(row_work, done + _CHUNK_ELEMENTS, side="right"))
        hi = min(max(hi, lo + 1), stop, lo + max_rows)
        yield lo, hi
        done = row_work[hi - start - 1]
        lo = hi


def _in_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(item) for item in items]`` on as many threads as torch uses: the numpy steps
    (bincount, ufuncs, sorting) release the GIL, so chunks run in parallel."""
    items = list(items)
    workers = min(len(items), torch.get_num_threads())
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _check_parameters(k1: int, k2: int, lambda_value: float, num: int) -> None:
    if not 1 <= k1 <= num - 1:
        raise ReidError(f"re-ranking needs 1 <= k1 <= number of items - 1 = {num - 1} "
                        f"(TEST.RERANK.K1), got k1={k1}")
    if not 1 <= k2 <= num:
        raise ReidError(f"re-ranking needs 1 <= k2 <= number of items = {num} "
                        f"(TEST.RERANK.K2), got k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ReidError(f"re-ranking needs 0 <= lambda_value <= 1 (TEST.RERANK.LAMBDA), "
                        f"got {lambda_value}")

