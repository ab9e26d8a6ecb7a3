"""Rank metrics accumulated over blocks of query rows, on all CPU cores (or on the GPU).

:class:`StreamingEvaluation` receives the distance rows of consecutive query blocks (from a
distance matrix, from features, or from re-ranking), cuts them into cache-sized chunks, ranks
each chunk's positives exactly (:mod:`reid.evaluation.positive_ranks`) on a thread pool, and
keeps only per-query results: AP, INP, CMC hits (and the ROC accumulator's bounded state).
A block that comes with its GPU copy is ranked there instead, whole
(:mod:`reid.evaluation.device_ranks`). Memory is therefore one block of rows plus ``O(Q)``,
whatever the gallery size.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from reid.errors import ReidError
from reid.evaluation.device_ranks import DeviceRanker
from reid.evaluation.positive_ranks import (CHUNK_CELLS, MAX_CHUNK_ROWS, RowBlock, SamePidIndex,
                                            rank_block)
from reid.evaluation.protocols import DEFAULT_PROTOCOL, build_protocol
from reid.evaluation.results import EvaluationResult
from reid.evaluation.roc import DEFAULT_FARS, RocAccumulator

logger = logging.getLogger(__name__)


class StreamingEvaluation:
    """Feed ``add(start, rows)`` with every query row once, in order; then ``result()``."""

    def __init__(self, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                 protocol: str = DEFAULT_PROTOCOL, roc: bool = False,
                 fars: tuple[float, ...] = DEFAULT_FARS, workers: int | None = None) -> None:
        self.q_pids, self.g_pids = _ids(q_pids), _ids(g_pids)
        self.q_camids, self.g_camids = _ids(q_camids), _ids(g_camids)
        _check_lengths(self.q_pids, self.q_camids, self.g_pids, self.g_camids)
        if max_rank < 1:
            raise ReidError(f"max_rank must be >= 1, got {max_rank}")
        self.index = SamePidIndex(self.q_pids, self.g_pids)
        self.protocol = build_protocol(protocol, self.g_pids, max_rank)
        self.roc = RocAccumulator(self.q_pids, self.g_pids, fars) if roc else None
        self.workers = max(1, workers or torch.get_num_threads())
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self._aps: list[np.ndarray] = []
        self._inps: list[np.ndarray] = []
        self._hits = np.zeros(self.protocol.length, dtype=np.float64)
        self._next_row = 0
        self._ranker: DeviceRanker | None = None

    @property
    def num_query(self) -> int:
        return len(self.q_pids)

    @property
    def num_gallery(self) -> int:
        return len(self.g_pids)

    def add(self, start: int, rows: np.ndarray, device_rows: torch.Tensor | None = None
            ) -> None:
        """Distances of queries ``start .. start + len(rows)`` to the whole gallery.

        ``device_rows``: the same distances on a GPU, when they were computed there; the
        positives are then ranked on the GPU (one sort per block) instead of on the CPU.
        """
        if rows.ndim != 2 or rows.shape[1] != self.num_gallery:
            raise ReidError(f"expected a block of query rows with {self.num_gallery} gallery "
                            f"columns, got shape {rows.shape}")
        if start != self._next_row or start + rows.shape[0] > self.num_query:
            raise ReidError(f"query rows must arrive in order: expected row {self._next_row}, "
                            f"got rows {start}..{start + rows.shape[0]} of {self.num_query}")
        if device_rows is not None and tuple(device_rows.shape) != rows.shape:
            raise ReidError(f"the GPU copy of query rows {start}.. has shape "
                            f"{tuple(device_rows.shape)}, the rows {rows.shape}")
        ranker = self._device_ranker(device_rows)
        if ranker is not None:
            results = [self._metrics(ranker.rank(start, device_rows, rows))]
        else:
            step = max(1, min(MAX_CHUNK_ROWS, CHUNK_CELLS // max(self.num_gallery, 1)))
            chunks = [(start + i, rows[i:i + step]) for i in range(0, rows.shape[0], step)]
            mapper = self._pool.map if self._pool is not None else map
            results = mapper(self._chunk, chunks)
        for ap, inp, hits in results:
            self._aps.append(ap)
            self._inps.append(inp)
            self._hits += hits
        self._next_row = start + rows.shape[0]

    def result(self) -> EvaluationResult:
        self.close()
        if self._next_row != self.num_query:
            raise ReidError(f"evaluation got {self._next_row} of {self.num_query} query rows")
        all_ap = np.concatenate(self._aps) if self._aps else np.empty(0)
        all_inp = np.concatenate(self._inps) if self._inps else np.empty(0)
        if all_ap.size == 0:
            raise ReidError(f"no query has a valid gallery match (checked {self.num_query} "
                            f"queries against {self.num_gallery} gallery items; a match needs "
                            "the same pid seen by another camera)")
        skipped = self.num_query - all_ap.size
        if skipped:
            logger.debug("%d of %d queries have no valid gallery match and are skipped",
                         skipped, self.num_query)
        return EvaluationResult(cmc=self._hits / all_ap.size, all_ap=all_ap, all_inp=all_inp,
                                num_queries=self.num_query,
                                roc=self.roc.result() if self.roc is not None else None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "StreamingEvaluation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunk(self, item: tuple[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, rows = item
        stop = start + rows.shape[0]
        return self._metrics(rank_block(rows, start, self.q_pids[start:stop],
                                        self.q_camids[start:stop], self.g_camids, self.index))

    def _device_ranker(self, device_rows: torch.Tensor | None) -> DeviceRanker | None:
        """The GPU ranker for blocks on a GPU; None for the CPU path (no device block, or
        ids that are not numbers, which torch cannot compare)."""
        ids = (self.q_pids, self.g_pids, self.q_camids, self.g_camids)
        if device_rows is None or any(i.dtype.kind not in "biuf" for i in ids):
            return None
        if self._ranker is None or self._ranker.device != device_rows.device:
            self._ranker = DeviceRanker(self.q_pids, self.g_pids, self.q_camids, self.g_camids,
                                        self.index, device_rows.device)
        return self._ranker

    def _metrics(self, block: RowBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """AP, INP and CMC hits of a ranked block (and its ROC counts)."""
        if self.roc is not None:
            self.roc.add(block)
        ap, inp = average_precision(block)
        return ap, inp, self.protocol.hits(block)


def average_precision(block: RowBlock) -> tuple[np.ndarray, np.ndarray]:
    """AP and INP of the block's valid queries, from the kept ranks of their positives."""
    valid = block.valid
    ranks, num_pos = block.ranks[valid], block.num_pos[valid]
    is_pos = block.positive_mask()[valid]
    hits = np.arange(1, ranks.shape[1] + 1)[None, :]
    precision = np.where(is_pos, hits / np.maximum(ranks, 1), 0.0)
    # A running sum adds left to right: the padding width (which depends on how queries are
    # chunked) cannot change the rounding, so results do not depend on chunks or threads.
    ap = np.cumsum(precision, axis=1)[:, -1] / num_pos if len(ranks) else np.empty(0)
    last = ranks[np.arange(len(ranks)), num_pos - 1]
    return ap, num_pos / last


def _ids(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.cpu().numpy()
    return np.asarray(values).ravel()


def _check_lengths(q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray,
                   g_camids: np.ndarray) -> None:
    if q_pids.size != q_camids.size:
        raise ReidError(f"q_pids has {q_pids.size} entries but q_camids {q_camids.size}")
    if g_pids.size != g_camids.size:
        raise ReidError(f"g_pids has {g_pids.size} entries but g_camids {g_camids.size}")
