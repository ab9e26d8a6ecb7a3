"""The gallery's own copy of its features and metadata, row ``i`` = vector id ``i``.

Rows are kept as the blocks they were added in (a memory-mapped block stays on disk: a
gallery built from an .npy larger than RAM never loads it), and read back by id for exact
re-scoring. Removed ids keep their row (faiss ids are positions) and are marked instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from reid.retrieval.sources import CHUNK_ROWS, FeatureSource, chunks_of, gather_rows


class GalleryRows:
    """Vectors and metadata by id; ``removed[i]`` marks a removed id."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._blocks: list[np.ndarray] = []
        self._norms: list[np.ndarray | None] = []  # each block's row norms, once known
        self._all_norms: np.ndarray | None = None
        self._starts = np.zeros(1, dtype=np.int64)  # start id of each block, then the end
        self.paths = np.empty(0, dtype=str)
        self.pids = np.empty(0, dtype=np.int64)
        self.camids = np.empty(0, dtype=np.int64)
        self.removed = np.empty(0, dtype=bool)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def live(self) -> int:
        return len(self) - int(self.removed.sum())

    def append(self, source: FeatureSource, norms: np.ndarray | None = None) -> np.ndarray:
        """Store ``source``'s rows (the array itself, not a copy) and their L2 ``norms`` if
        known; returns their new ids."""
        first = len(self)
        self._blocks.append(source.vectors)
        self._norms.append(None if norms is None else np.asarray(norms, dtype=np.float32))
        self._all_norms = None
        self._starts = np.append(self._starts, first + len(source))
        self.paths = np.concatenate([self.paths.astype(str), source.paths.astype(str)])
        self.pids = np.concatenate([self.pids, source.pids])
        self.camids = np.concatenate([self.camids, source.camids])
        self.removed = np.concatenate([self.removed, np.zeros(len(source), dtype=bool)])
        return np.arange(first, len(self), dtype=np.int64)

    def take(self, ids: np.ndarray, buffer: np.ndarray | None = None) -> np.ndarray:
        """float32 rows of ``ids`` (any shape; -1 gives a zero row), shape ``ids.shape + (D,)``,
        written into ``buffer`` (float32, at least that many values) when given."""
        flat = ids.ravel()
        out = np.empty((flat.size, self.dim), dtype=np.float32) if buffer is None else \
            buffer[:flat.size * self.dim].reshape(flat.size, self.dim)
        valid = flat >= 0
        if len(self._blocks) == 1:  # one block (a gallery built in one go): one gather
            gather_rows(self._blocks[0], np.where(valid, flat, 0), out)
        else:
            block_of = np.searchsorted(self._starts, flat, side="right") - 1
            for block in np.unique(block_of[valid]):
                where = np.flatnonzero(valid & (block_of == block))
                local = flat[where] - self._starts[block]
                order = np.argsort(local, kind="stable")  # sorted reads: kind to a memory map
                out[where[order]] = self._blocks[block][local[order]]
        out[~valid] = 0.0
        return out.reshape(*ids.shape, self.dim)

    def norms(self, ids: np.ndarray) -> np.ndarray:
        """float32 L2 norms of ``ids``' rows (-1 gives 0): re-scoring needs them for every
        candidate, and computing them from the gathered rows was a quarter of its time."""
        return np.where(ids >= 0, self.all_norms()[np.maximum(ids, 0)], np.float32(0.0))

    def all_norms(self) -> np.ndarray:
        """Every row's L2 norm (float32, by id). A block added without them (a folder saved
        before they were kept) is measured once, on first use."""
        if self._all_norms is None:  # every block's, in id order, until the next append
            for block, vectors in enumerate(self._blocks):
                if self._norms[block] is None:
                    self._norms[block] = np.concatenate(
                        [np.linalg.norm(chunk, axis=1) for _, chunk in chunks_of(vectors)]
                        or [np.empty(0)]).astype(np.float32)
            self._all_norms = np.concatenate(self._norms) if self._norms else \
                np.empty(0, dtype=np.float32)
        return self._all_norms

    def chunks(self, rows: int = CHUNK_ROWS):
        """Consecutive in-memory float32 chunks of every row, in id order."""
        for block in self._blocks:
            for _, chunk in chunks_of(block, rows):
                yield chunk

    def write_vectors(self, path: Path) -> None:
        """All rows to an .npy file, chunk by chunk (never the whole gallery in memory)."""
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                        shape=(len(self), self.dim))
        start = 0
        for chunk in self.chunks():
            out[start:start + len(chunk)] = chunk
            start += len(chunk)
        out.flush()
        del out
