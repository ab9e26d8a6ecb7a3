"""Rank metrics for re-identification: CMC, mAP and mINP from a query x gallery distance matrix.

Protocol (Market-1501, the default), for each query:

* gallery entries with the query's pid AND camera are removed ("junk": the same person seen by
  the same camera is too easy a match to count);
* the remaining gallery is ranked by ascending distance; ties are broken by gallery index (the
  order a stable sort gives), so results are deterministic;
* a query with no remaining positive is skipped (it contributes to no metric).

Metrics over the kept ranked list of a valid query with ``P`` positives:

* AP  = mean over the positives of precision at the positive's rank (non-interpolated);
* INP = P / (1-based rank of the last positive)  (Ye et al., "Deep Learning for Person Re-id");
* CMC[k] = 1 if the first positive is within the top k+1, averaged over valid queries
  (``protocol="cuhk03"``: single-gallery-shot CMC, see :mod:`reid.evaluation.protocols`).

No row is sorted: only the ranks of the positives are computed, exactly
(:mod:`reid.evaluation.positive_ranks`), on all CPU cores, in cache-sized row chunks.
"""
from __future__ import annotations

import numpy as np

from reid.errors import ReidError
from reid.evaluation.protocols import DEFAULT_PROTOCOL
from reid.evaluation.results import summarize
from reid.evaluation.streaming import StreamingEvaluation

__all__ = ["evaluate_rank", "summarize"]  # summarize: defined with the result types


def evaluate_rank(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                  q_camids: np.ndarray, g_camids: np.ndarray, max_rank: int = 50,
                  protocol: str = DEFAULT_PROTOCOL
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CMC, per-query AP and per-query INP (FastReID's ``evaluate_rank`` contract).

    Args:
        distmat: ``Q x G`` distances (smaller = more similar); any float dtype, not copied.
        q_pids, q_camids: length-``Q`` query identities and cameras.
        g_pids, g_camids: length-``G`` gallery identities and cameras.
        max_rank: length of the CMC curve (capped at ``G``; for "cuhk03" at the number of
            gallery identities).
        protocol: "market" or "cuhk03" (any name in ``reid.evaluation.protocols.PROTOCOLS``).

    Returns:
        ``(cmc, all_AP, all_INP)``: ``cmc`` float32 of length ``min(max_rank, G)``;
        ``all_AP`` and ``all_INP`` float32 with one value per valid query, in query order.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ReidError(f"evaluate_rank expects a 2-D query x gallery distance matrix, "
                        f"got shape {distmat.shape}")
    _check_sizes(distmat, q_pids, g_pids, q_camids, g_camids)
    with StreamingEvaluation(q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                             protocol=protocol) as evaluation:
        evaluation.add(0, distmat)
        result = evaluation.result()
    return (result.cmc.astype(np.float32), result.all_ap.astype(np.float32),
            result.all_inp.astype(np.float32))


def _check_sizes(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids) -> None:
    num_q, num_g = distmat.shape
    sizes = {"q_pids": (q_pids, num_q), "q_camids": (q_camids, num_q),
             "g_pids": (g_pids, num_g), "g_camids": (g_camids, num_g)}
    for name, (array, expected) in sizes.items():
        if np.size(array) != expected:
            raise ReidError(f"evaluate_rank: {name} has {np.size(array)} entries but the distance "
                            f"matrix {distmat.shape} needs {expected}")
