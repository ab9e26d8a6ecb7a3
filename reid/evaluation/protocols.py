"""CMC protocols: how the ranks of a query's true matches become its CMC hits.

A protocol turns the :class:`RowBlock` of a block of queries into the sum, over the block's
valid queries, of the per-query CMC indicators (``hits[k]`` = how many valid queries have a
hit within the top ``k + 1``; fractional when a protocol averages random repeats). Summing
blocks and dividing by the number of valid queries gives the CMC curve. AP and INP are the
same under every protocol (computed over the full kept list).

A test set picks its protocol through its dataset class attribute ``eval_protocol``
(default ``"market"``); register a new one with ``@PROTOCOLS.register(name=...)``.
"""
from __future__ import annotations

import numpy as np

from reid.evaluation.positive_ranks import RowBlock
from reid.utils.registry import Registry

PROTOCOLS = Registry("evaluation protocol")
DEFAULT_PROTOCOL = "market"


@PROTOCOLS.register(name="market")
class MarketProtocol:
    """Market-1501: a query's hit rank is the kept rank of its first positive."""

    def __init__(self, g_pids: np.ndarray, max_rank: int, **_: object) -> None:
        self.length = min(max_rank, len(g_pids))

    def hits(self, block: RowBlock) -> np.ndarray:
        if not block.valid.any():
            return np.zeros(self.length, dtype=np.float64)
        return _cumulative_hits(block.ranks[block.valid, 0], self.length)


@PROTOCOLS.register(name="cuhk03")
class Cuhk03Protocol:
    """CUHK03 single-gallery-shot CMC, averaged over seeded random repeats.

    In repeat ``t`` every gallery item gets the priority ``default_rng(seed).random((repeats,
    G))[t]``; each identity is represented by its kept item of smallest priority (for the
    query's own identity: its positive of smallest priority, since its same-camera items are
    junk). The hit rank is the rank of that positive among the representatives, ordered by
    (distance, gallery index). The CMC length is ``min(max_rank, number of gallery ids)``.
    """

    def __init__(self, g_pids: np.ndarray, max_rank: int, repeats: int = 10, seed: int = 0,
                 **_: object) -> None:
        self.priority = np.random.default_rng(seed).random((repeats, len(g_pids)))
        ids, id_of_item = np.unique(g_pids, return_inverse=True)
        self.length = min(max_rank, len(ids))
        # Representatives per repeat: sort items by (identity, priority), take each run's first.
        self.representatives = np.empty((repeats, len(ids)), dtype=np.int64)
        for t in range(repeats):
            order = np.lexsort((self.priority[t], id_of_item))
            first = np.searchsorted(id_of_item[order], np.arange(len(ids)))
            self.representatives[t] = order[first]
        self.representative_pids = g_pids[self.representatives]

    def hits(self, block: RowBlock) -> np.ndarray:
        valid = block.valid
        total = np.zeros(self.length, dtype=np.float64)
        if not valid.any():
            return total
        dist = block.dist[valid]
        q_pids = block.q_pids[valid]
        is_pos = block.positive_mask()[valid]
        pos_index, pos_dist = block.pos_index[valid], block.pos_dist[valid]
        rows = np.arange(len(q_pids))
        for t in range(len(self.representatives)):
            # The query's representative: its positive of smallest priority.
            priority = np.where(is_pos, self.priority[t][pos_index], np.inf)
            pick = np.argmin(priority, axis=1)
            own_index, own_dist = pos_index[rows, pick], pos_dist[rows, pick]
            others = self.representatives[t]
            other_dist = dist[:, others]
            tie = (other_dist == own_dist[:, None]) & (others[None, :] < own_index[:, None])
            before = (other_dist < own_dist[:, None]) | tie
            before &= self.representative_pids[t][None, :] != q_pids[:, None]
            total += _cumulative_hits(1 + before.sum(axis=1), self.length)
        return total / len(self.representatives)


def build_protocol(name: str, g_pids: np.ndarray, max_rank: int, **options: object):
    return PROTOCOLS.get(name)(g_pids=g_pids, max_rank=max_rank, **options)


def _cumulative_hits(hit_ranks: np.ndarray, length: int) -> np.ndarray:
    """``out[k]`` = number of queries whose (1-based) hit rank is at most ``k + 1``."""
    counts = np.bincount(np.minimum(hit_ranks, length + 1) - 1, minlength=length + 1)
    return np.cumsum(counts[:length]).astype(np.float64)
