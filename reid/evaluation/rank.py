"""Rank metrics for re-identification: CMC, mAP and mINP under the Market-1501 protocol.

Protocol, for each query:

* gallery entries with the query's pid AND camera are removed ("junk": the same person seen by
  the same camera is too easy a match to count);
* the remaining gallery is ranked by ascending distance; ties are broken by gallery index
  (stable sort), so results are deterministic;
* a query with no remaining positive is skipped (it contributes to no metric).

Metrics over the kept ranked list of a valid query with ``P`` positives:

* AP  = mean over the positives of precision at the positive's rank (non-interpolated);
* INP = P / (1-based rank of the last positive)  (Ye et al., "Deep Learning for Person Re-id");
* CMC[k] = 1 if the first positive is within the top k+1, averaged over valid queries.

The math is vectorised over queries; rows are processed in blocks so memory stays bounded
whatever the number of queries.
"""
from __future__ import annotations

import logging

import numpy as np

from reid.errors import ReidError

logger = logging.getLogger(__name__)

# Upper bound on the number of (query, gallery) cells held at once by one block of rows.
_BLOCK_CELLS = 1 << 20


def evaluate_rank(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                  q_camids: np.ndarray, g_camids: np.ndarray,
                  max_rank: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CMC, per-query AP and per-query INP (FastReID's ``evaluate_rank`` contract).

    Args:
        distmat: ``Q x G`` distances (smaller = more similar).
        q_pids, q_camids: length-``Q`` query identities and cameras.
        g_pids, g_camids: length-``G`` gallery identities and cameras.
        max_rank: length of the CMC curve (capped at ``G``).

    Returns:
        ``(cmc, all_AP, all_INP)``: ``cmc`` float32 of length ``min(max_rank, G)``;
        ``all_AP`` and ``all_INP`` float32 with one value per valid query, in query order.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids).ravel(), np.asarray(g_pids).ravel()
    q_camids, g_camids = np.asarray(q_camids).ravel(), np.asarray(g_camids).ravel()
    _check_shapes(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    num_g = distmat.shape[1]
    max_rank = min(max_rank, num_g)

    block = max(1, _BLOCK_CELLS // max(num_g, 1))
    empty = np.empty(0)
    first_ranks, aps, inps = [empty], [empty], [empty]
    for start in range(0, distmat.shape[0], block):
        rows = slice(start, start + block)
        first, ap, inp = _block_metrics(distmat[rows], q_pids[rows], g_pids,
                                        q_camids[rows], g_camids)
        first_ranks.append(first)
        aps.append(ap)
        inps.append(inp)
    first_rank = np.concatenate(first_ranks)
    all_ap, all_inp = np.concatenate(aps), np.concatenate(inps)

    if first_rank.size == 0:
        raise ReidError(f"no query has a valid gallery match (checked {distmat.shape[0]} queries "
                        f"against {num_g} gallery items; a match needs the same pid seen by "
                        "another camera)")
    skipped = distmat.shape[0] - first_rank.size
    if skipped:
        logger.debug("%d of %d queries have no valid gallery match and are skipped",
                     skipped, distmat.shape[0])

    # cmc[k] = share of valid queries whose first positive is at kept rank <= k + 1.
    ks = np.arange(1, max_rank + 1)
    cmc = (first_rank[:, None] <= ks[None, :]).mean(axis=0)
    return cmc.astype(np.float32), all_ap.astype(np.float32), all_inp.astype(np.float32)


def summarize(cmc: np.ndarray, all_AP: np.ndarray, all_INP: np.ndarray) -> dict[str, float]:
    """Rank-1/5/10, mAP and mINP in percent.

    When the CMC curve is shorter than k (gallery smaller than k), Rank-k is its last value:
    with the whole gallery ranked, the top-k hit rate equals the top-G one.
    """
    cmc = np.asarray(cmc, dtype=np.float64)

    def rank(k: int) -> float:
        return float(cmc[min(k, cmc.size) - 1] * 100.0)

    return {
        "Rank-1": rank(1),
        "Rank-5": rank(5),
        "Rank-10": rank(10),
        "mAP": float(np.mean(np.asarray(all_AP, dtype=np.float64)) * 100.0),
        "mINP": float(np.mean(np.asarray(all_INP, dtype=np.float64)) * 100.0),
    }


def _block_metrics(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                   q_camids: np.ndarray, g_camids: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-positive rank, AP and INP of the valid queries among one block of rows."""
    order = np.argsort(dist, axis=1, kind="stable")
    same_pid = g_pids[order] == q_pids[:, None]
    junk = same_pid & (g_camids[order] == q_camids[:, None])
    keep = ~junk
    positive = same_pid & keep

    # 1-based rank of each cell in its row's kept list (junk cells get the rank of the kept
    # cell before them; they are never read because only positives are).
    kept_rank = np.cumsum(keep, axis=1)
    hits_so_far = np.cumsum(positive, axis=1)
    num_pos = hits_so_far[:, -1] if dist.shape[1] else np.zeros(dist.shape[0], dtype=np.int64)
    valid = num_pos > 0

    positive, kept_rank = positive[valid], kept_rank[valid]
    hits_so_far, num_pos = hits_so_far[valid], num_pos[valid]
    safe_rank = np.maximum(kept_rank, 1)  # only read where positive, where it is >= 1

    precision_at_hits = np.where(positive, hits_so_far / safe_rank, 0.0)
    ap = precision_at_hits.sum(axis=1) / num_pos
    last_rank = np.where(positive, kept_rank, 0).max(axis=1)
    inp = num_pos / last_rank
    # argmax finds the first True: the first positive's kept rank.
    first_rank = kept_rank[np.arange(len(kept_rank)), positive.argmax(axis=1)]
    return first_rank, ap, inp


def _check_shapes(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                  q_camids: np.ndarray, g_camids: np.ndarray, max_rank: int) -> None:
    if distmat.ndim != 2:
        raise ReidError(f"evaluate_rank expects a 2-D query x gallery distance matrix, "
                        f"got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    sizes = {"q_pids": (q_pids, num_q), "q_camids": (q_camids, num_q),
             "g_pids": (g_pids, num_g), "g_camids": (g_camids, num_g)}
    for name, (array, expected) in sizes.items():
        if array.size != expected:
            raise ReidError(f"evaluate_rank: {name} has {array.size} entries but the distance "
                            f"matrix {distmat.shape} needs {expected}")
    if max_rank < 1:
        raise ReidError(f"evaluate_rank: max_rank must be >= 1, got {max_rank}")
