"""Exact ranks of each query's true matches, without sorting the gallery.

Rank metrics only need where the positives land in a query's ranked gallery list, so instead of
an ``argsort`` of every ``G``-long row this module counts, for each positive, how many kept
gallery items come before it. Order is ascending distance, ties broken by gallery index (the
order a stable sort gives). Junk items (same pid AND same camera as the query) are not kept.

How the counting stays exact and close to one pass over the distances:

1. Per query, gather the gallery items of its pid (a small padded table), split them into
   positives and junk, and sort the positives by (distance, gallery index).
2. Candidates: the kept non-positive items whose distance is at most the row's last positive
   distance (one comparison per distance, then ``flatnonzero``). Every other item comes after all
   the positives, so it changes no rank; on real features few items remain.
3. Map every candidate's distance to one of ``K`` cells with a monotone function of the
   distance (affine on the row's positive range, clipped, truncated; computed identically for
   the positives). A candidate in a cell below a positive's cell is before it; one in a cell
   above is after it. A histogram of cells (one ``bincount``) and its cumulative sum therefore
   count the candidates before every positive, except the few sharing a positive's cell.
4. Those "ambiguous" candidates are found with a boolean lookup table and compared exactly
   (distance, then gallery index) with the positives of their row.

A positive's rank is the count of candidates before it plus the number of positives before it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from reid.errors import ReidError

# Distances of one row-chunk (1 Mi cells): its candidate mask (1 MB) stays in the CPU's L2
# cache, and the per-chunk Python overhead is spread over enough cells (measured on the
# Market-sized benchmark: 64-row chunks beat 16-row chunks).
CHUNK_CELLS = 1 << 20
MAX_CHUNK_ROWS = 64


@dataclass
class RowBlock:
    """Ranks of the positives of a block of consecutive queries.

    Arrays are per row ``r`` of the block; ``P`` is the largest positive count in the block.
    Entries ``j >= num_pos[r]`` of the ``P``-wide arrays are padding.
    """

    start: int                 # index of the block's first query
    dist: np.ndarray           # c x G distances of these queries (float)
    q_pids: np.ndarray         # c
    q_camids: np.ndarray       # c
    members: np.ndarray        # c x M gallery indices with the query's pid, -1 = padding
    num_pos: np.ndarray        # c, positives per query (0 = no valid match: query skipped)
    pos_dist: np.ndarray       # c x P positive distances, ascending (ties by gallery index)
    pos_index: np.ndarray      # c x P their gallery indices
    ranks: np.ndarray          # c x P their 1-based ranks in the kept list (int64)

    @property
    def valid(self) -> np.ndarray:
        return self.num_pos > 0

    def positive_mask(self) -> np.ndarray:
        width = self.ranks.shape[1]
        return np.arange(width)[None, :] < self.num_pos[:, None]


class SamePidIndex:
    """For every query, the gallery items sharing its pid (CSR over the gallery sorted by pid)."""

    def __init__(self, q_pids: np.ndarray, g_pids: np.ndarray) -> None:
        # A stable sort keeps each pid's gallery items in ascending index order, which the
        # tie rule (distance, then gallery index) relies on when positives are sorted.
        self.order = np.argsort(g_pids, kind="stable")
        sorted_pids = g_pids[self.order]
        self.begin = np.searchsorted(sorted_pids, q_pids, side="left")
        self.count = np.searchsorted(sorted_pids, q_pids, side="right") - self.begin

    def members(self, rows: slice) -> np.ndarray:
        """``c x M`` gallery indices of the pid of each query in ``rows``; -1 pads."""
        begin, count = self.begin[rows], self.count[rows]
        width = int(count.max()) if count.size else 0
        cols = np.arange(width)
        inside = cols[None, :] < count[:, None]
        out = np.full((count.size, width), -1, dtype=np.int64)
        out[inside] = self.order[(begin[:, None] + cols[None, :])[inside]]
        return out


class _Buffers(threading.local):
    """Per-thread scratch arrays, reused across chunks (fresh large arrays cost page faults)."""

    def get(self, name: str, size: int, dtype) -> np.ndarray:
        store = self.__dict__.setdefault("arrays", {})
        array = store.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = np.empty(max(size, 1), dtype=dtype)
            store[name] = array
        return array[:size]


_BUFFERS = _Buffers()


def rank_block(dist: np.ndarray, start: int, q_pids: np.ndarray, q_camids: np.ndarray,
               g_camids: np.ndarray, index: SamePidIndex) -> RowBlock:
    """Exact kept ranks of the positives of queries ``start .. start + len(dist)``.

    ``dist`` is the ``c x G`` distance block of those queries; ``q_pids``/``q_camids`` are the
    block's own (length ``c``), ``index`` is built over all queries.
    """
    dist = np.ascontiguousarray(dist)
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(np.float64)  # exact for integers and float16
    rows = slice(start, start + dist.shape[0])
    members = index.members(rows)
    pos_dist, pos_index, num_pos = _sorted_positives(dist, members, q_camids, g_camids, start)
    ranks = np.zeros(pos_dist.shape, dtype=np.int64)
    if pos_dist.shape[1]:
        ranks = _count_ranks(dist, members, pos_dist, pos_index, num_pos)
    return RowBlock(start=start, dist=dist, q_pids=q_pids, q_camids=q_camids, members=members,
                    num_pos=num_pos, pos_dist=pos_dist, pos_index=pos_index, ranks=ranks)


def _sorted_positives(dist: np.ndarray, members: np.ndarray, q_camids: np.ndarray,
                      g_camids: np.ndarray, start: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positives of each row sorted by (distance, gallery index), their indices and counts."""
    valid = members >= 0
    safe = np.where(valid, members, 0)
    member_dist = np.take_along_axis(dist, safe, axis=1)
    positive = valid & (g_camids[safe] != q_camids[:, None])
    bad = positive & ~np.isfinite(member_dist)
    if bad.any():
        raise non_finite_match(start + int(np.nonzero(bad.any(axis=1))[0][0]))
    num_pos = positive.sum(axis=1)
    width = int(num_pos.max()) if num_pos.size else 0
    # Positives first, then by distance; lexsort is stable, so equal distances keep the
    # ascending gallery order of the member table.
    order = np.lexsort((np.where(positive, member_dist, 0.0), ~positive), axis=1)[:, :width]
    pos_dist = np.take_along_axis(member_dist, order, axis=1)
    pos_index = np.take_along_axis(safe, order, axis=1)
    return pos_dist, pos_index, num_pos


def non_finite_match(query: int) -> ReidError:
    """The error for a query whose distance to one of its true matches is NaN or infinite."""
    return ReidError(f"distances must be finite, but query {query} has a non-finite distance "
                     "to one of its true matches")


def _count_ranks(dist: np.ndarray, members: np.ndarray, pos_dist: np.ndarray,
                 pos_index: np.ndarray, num_pos: np.ndarray) -> np.ndarray:
    """1-based kept-list rank of every positive (steps 2 to 4 of the module docstring)."""
    rows, num_g = dist.shape
    width = pos_dist.shape[1]
    is_pos = np.arange(width)[None, :] < num_pos[:, None]
    flat, counts = _candidates(dist, members, pos_dist, num_pos)
    num_cells = _cells_per_row(flat.size, rows)
    scale, offset = _cell_map(pos_dist, num_pos, num_cells)
    cells = _to_cells(np.take(dist.ravel(), flat), np.repeat(scale, counts),
                      np.repeat(offset, counts), num_cells)
    cells += np.repeat(np.arange(rows) * num_cells, counts)  # flat cell: row * K + cell
    # Padding entries may hold a junk item's distance (even NaN): mapped as 0, then dropped.
    pos_cells = _to_cells(np.where(is_pos, pos_dist, 0), scale[:, None], offset[:, None],
                          num_cells)
    pos_cells[~is_pos] = 0
    histogram = np.bincount(cells, minlength=rows * num_cells).reshape(rows, num_cells)
    below = np.cumsum(histogram, axis=1) - histogram  # items in cells strictly below each cell
    before = np.take_along_axis(below, pos_cells, axis=1)
    pos_cells += np.arange(rows)[:, None] * num_cells
    before += _ambiguous_before(dist, flat, cells, pos_cells, pos_dist, pos_index, is_pos,
                                num_cells)
    ranks = before + np.arange(1, width + 1)[None, :]
    return np.where(is_pos, ranks, 0)


def _candidates(dist: np.ndarray, members: np.ndarray, pos_dist: np.ndarray,
                num_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (ascending) of the kept non-positive items not above their row's last
    positive, and how many each row has (step 2)."""
    rows, num_g = dist.shape
    last = pos_dist[np.arange(rows), np.maximum(num_pos - 1, 0)]
    # NaN for a row without positives: no item passes ``<=``. NaN distances never pass either
    # (they rank last, after every positive, as a sort would put them).
    last = np.where(num_pos > 0, last, np.nan).astype(dist.dtype)
    keep = _BUFFERS.get("candidates", dist.size, np.bool_).reshape(dist.shape)
    np.less_equal(dist, last[:, None], out=keep)
    valid = members >= 0
    member_rows = np.broadcast_to(np.arange(rows)[:, None], members.shape)
    keep[member_rows[valid], members[valid]] = False  # positives and junk are not counted
    flat = np.flatnonzero(keep)
    counts = np.diff(np.searchsorted(flat, np.arange(rows + 1) * num_g))
    return flat, counts


def _cells_per_row(num_candidates: int, rows: int) -> int:
    # About two candidates per cell: the histogram stays as small as the candidates, and the
    # items sharing a positive's cell (compared exactly) stay few.
    per_row = max(num_candidates // max(rows, 1), 1)
    return int(min(1 << 16, max(64, 1 << (per_row // 2).bit_length())))


def _cell_map(pos_dist: np.ndarray, num_pos: np.ndarray, num_cells: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``cell = d * scale + offset`` putting the row's positives in cells 1..K-2."""
    rows = pos_dist.shape[0]
    has_pos = num_pos > 0
    last = np.maximum(num_pos - 1, 0)
    low = np.where(has_pos, pos_dist[:, 0], 0.0).astype(np.float64)
    high = np.where(has_pos, pos_dist[np.arange(rows), last], 0.0).astype(np.float64)
    span = high - low
    # A row whose positives (nearly) share one distance still needs a finite scale; how
    # fine the cells are only changes how many items are compared exactly, never the result.
    floor = np.maximum(np.abs(low), 1.0) * 1e-6
    span = np.where(span > floor, span, 1e3 * floor)
    scale = (num_cells - 3) / span
    offset = 1.0 - low * scale
    # Same dtype as the distances: float32 rows are then mapped with float32 arithmetic only.
    dtype = pos_dist.dtype
    return scale.astype(dtype), offset.astype(dtype)


def _to_cells(values: np.ndarray, scale: np.ndarray, offset: np.ndarray, num_cells: int
              ) -> np.ndarray:
    """Cell ``0 .. num_cells - 1`` of each (non-NaN) value, as int64.

    Every step is a monotone non-decreasing map of the value (IEEE rounding is monotone, and
    values and positives go through the same operations with the same row constants), so a
    smaller cell always means a smaller distance.
    """
    with np.errstate(over="ignore"):  # a huge distance becomes +-inf: clipped like any other
        work = np.multiply(values, scale)
        np.add(work, offset, out=work)
    np.clip(work, 0, num_cells - 1, out=work)
    return work.astype(np.int64)


def _ambiguous_before(dist: np.ndarray, flat: np.ndarray, cells: np.ndarray,
                      pos_cells: np.ndarray, pos_dist: np.ndarray, pos_index: np.ndarray,
                      is_pos: np.ndarray, num_cells: int) -> np.ndarray:
    """Per positive, the candidates that share its cell and come before it (exact compare,
    step 3). ``flat`` are the candidates' flat indices in ``dist``; ``cells`` and
    ``pos_cells`` are flat cells (``row * K + cell``)."""
    num_g = dist.shape[1]
    shared = np.zeros(pos_dist.shape[0] * num_cells, dtype=bool)
    shared[pos_cells[is_pos]] = True
    pick = np.flatnonzero(np.take(shared, cells))
    extra = np.zeros(pos_dist.shape, dtype=np.int64)
    if pick.size == 0:
        return extra
    cell, flat = cells[pick], flat[pick]
    row, col = np.divmod(flat, num_g)
    value = dist.ravel()[flat]
    p_dist, p_index = pos_dist[row], pos_index[row]
    precedes = ((value[:, None] < p_dist)
                | ((value[:, None] == p_dist) & (col[:, None] < p_index)))
    precedes &= cell[:, None] == pos_cells[row]
    precedes &= is_pos[row]
    # Candidates are in row order, so each row's ambiguous items are one run: sum the runs.
    present, first = np.unique(row, return_index=True)
    extra[present] = np.add.reduceat(precedes.astype(np.int64), first, axis=0)
    return extra
