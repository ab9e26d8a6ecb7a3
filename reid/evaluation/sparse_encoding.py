"""The sparse encoding of k-reciprocal re-ranking: rows of ``V`` and their inverted index.

``V`` has about ``N * k1 * k2`` non-zeros out of ``N x N``; it is kept by rows (``Csr``) and, for
the gallery rows, by columns (``InvertedIndex``), so that the Jaccard overlap of a query block
touches only the gallery rows that share a non-zero column with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Csr:
    """A sparse ``num x num`` matrix by rows (column indices sorted within each row)."""

    indptr: np.ndarray   # num + 1 offsets into indices / data
    indices: np.ndarray  # int64 columns
    data: np.ndarray     # float64 values

    @classmethod
    def from_sorted_pairs(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                          num: int) -> "Csr":
        indptr = np.zeros(num + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=num), out=indptr[1:])
        return cls(indptr, cols.astype(np.int64, copy=False), vals.astype(np.float64))

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def row_slice(self, start: int, stop: int) -> "Csr":
        lo, hi = self.indptr[start], self.indptr[stop]
        return Csr(self.indptr[start:stop + 1] - lo, self.indices[lo:hi], self.data[lo:hi])

    def entries(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, value) of the entries of rows ``start..stop-1``."""
        lo, hi = self.indptr[start], self.indptr[stop]
        rows = np.repeat(np.arange(start, stop), np.diff(self.indptr[start:stop + 1]))
        return rows, self.indices[lo:hi], self.data[lo:hi]


@dataclass(frozen=True)
class InvertedIndex:
    """For each column ``k`` of the encoding, the gallery rows with a non-zero there."""

    start: np.ndarray   # per column: first position in rows / values
    count: np.ndarray   # per column: number of gallery rows
    rows: np.ndarray    # gallery row (0-based within the gallery)
    values: np.ndarray  # V(g, k)

    @classmethod
    def of_rows(cls, encoding: Csr, first_row: int, num: int) -> "InvertedIndex":
        gallery = encoding.row_slice(first_row, num)
        rows, cols, vals = gallery.entries(0, num - first_row)
        order = np.argsort(cols, kind="stable")
        count = np.bincount(cols, minlength=num)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(start, count, rows[order], vals[order])


def concatenated_ranges(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``concatenate([arange(f, f + c) for f, c in zip(first, count)])`` without a loop."""
    total = int(count.sum())
    offsets = np.repeat(first - np.cumsum(count) + count, count)
    return offsets + np.arange(total, dtype=np.int64)
