"""Rank metrics from each query's top-K candidates (a faiss index, or a bfloat16 scan), for
galleries too large to rank whole in the time at hand.

:func:`approximate_evaluation` searches the gallery with an index of any faiss factory
string (:class:`reid.retrieval.Gallery`: candidates re-scored with reid's exact distance), or
with index type "bf16" scores every gallery row in bfloat16 and re-scores the best exactly
(:mod:`reid.retrieval.bf16_scan`: no partition, so no positive skipped unseen), and
computes the Market protocol's metrics from the candidate lists alone
(:func:`candidate_metrics`). They are LOWER BOUNDS of the exact metrics:

* a positive outside the candidates counts as never retrieved: its precision term is 0, so
  AP can only be lower than exact (equal when every positive is a candidate);
* CMC@k is exact for ``k <= K`` when the candidates are the true top-K, and otherwise misses
  only queries whose first match fell out of the list;
* INP of a query whose last positive is not a candidate uses the last possible rank (every
  non-junk gallery item), its smallest value.

Beside them, ``candidate_recall`` says how much the candidates are worth: the mean fraction
of the exact top-K found, measured by brute force on a sample of queries.
"""
from __future__ import annotations

import logging

import numpy as np

from reid.errors import ReidError
from reid.evaluation.results import EvaluationResult

logger = logging.getLogger(__name__)

DEFAULT_CANDIDATES = 100
# Candidates fetched per kept candidate before exact re-scoring: the index's coarse order is
# corrected on twice the list (a PQ index's own default, 10x, would gather 1,000 rows of every
# query: 6.9 GB for Market+500k's 3,368 queries at 512-d).
RESCORE = 2
# queries searched exactly (brute force) to measure the candidates' recall: Market+500k's
# bf16 top 150 measured 96.90 % on 100 queries, 96.86 % on 200; each costs ~4 ms there
RECALL_SAMPLE = 100


def approximate_evaluation(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids,
                           index_type: str, metric: str = "cosine", max_rank: int = 50,
                           candidates: int = DEFAULT_CANDIDATES,
                           recall_sample: int = RECALL_SAMPLE, seed: int = 0,
                           search_params: str | None = None, device: str = "cpu"
                           ) -> EvaluationResult:
    """Metrics from the top-``candidates`` of an ``index_type`` index (see module doc);
    ``search_params``: faiss search parameters, e.g. ``nprobe=32`` (default: by index type).
    ``index_type`` "bf16" is no faiss index: every gallery row scored in bfloat16 on
    ``device`` (:mod:`reid.retrieval.bf16_scan`)."""
    from reid.retrieval.recall import ExactTopK, recall_at
    from reid.retrieval.sources import as_matrix, from_arrays

    queries = as_matrix(q_feats, "query features")
    gallery_source = from_arrays(g_feats)
    k = min(int(candidates), len(gallery_source))
    if k < 1:
        raise ReidError(f"approximate evaluation needs candidates >= 1, got {candidates}")
    sample = np.sort(np.random.default_rng(seed).choice(
        len(queries), min(recall_sample, len(queries)), replace=False))
    reference = ExactTopK(queries[sample], k, metric)  # the brute-force top-k of the sample
    found = _candidates(queries, gallery_source, k, index_type, metric, seed, search_params,
                        device, reference)
    result = candidate_metrics(found, q_pids, g_pids, q_camids, g_camids, max_rank)
    result.candidate_recall = recall_at(found[sample], reference.result()[0], k)
    result.candidates = k
    logger.info("approximate evaluation (%s, top %d): candidates' recall against exact %.4f "
                "on %d queries", index_type, k, result.candidate_recall, len(sample))
    return result


def _candidates(queries: np.ndarray, gallery_source, k: int, index_type: str, metric: str,
                seed: int, search_params: str | None, device: str, reference) -> np.ndarray:
    """Each query's top-``k`` gallery ids by the chosen index; every gallery chunk is also
    handed to ``reference`` (the bf16 scan does it as it reads them: one pass)."""
    from reid.retrieval.bf16_scan import BF16_SCAN, bf16_top_k
    if index_type == BF16_SCAN:
        if search_params:
            raise ReidError(f"index type {BF16_SCAN!r} takes no search parameters, got "
                            f"{search_params!r}")
        # bfloat16 ranks unit rows nearly exactly: no wider list to re-score (Market+500k top
        # 150: the same mAP, 70.00, with 150 or 300 re-scored; benchmarks/RESULTS.md).
        # Squared L2 keeps the margin (its scores carry the rows' norms: coarser rounding).
        rescore = 1 if metric == "cosine" else RESCORE
        return bf16_top_k(queries, gallery_source, k, metric, device, rescore=rescore,
                          also=reference)[0]
    from reid.retrieval.gallery import Gallery  # faiss and the model card (torchvision): ~2 s
    gallery = Gallery.build(gallery_source, index_type, metric, seed=seed, rescore=RESCORE,
                            search_params=search_params)
    reference.add_all(gallery_source)
    return gallery.search(queries, k).ids


def candidate_metrics(candidates: np.ndarray, q_pids, g_pids, q_camids, g_camids,
                      max_rank: int = 50) -> EvaluationResult:
    """CMC, AP and INP (lower bounds) from ``Q x K`` gallery ids per query, nearest first
    (-1: no candidate). Junk (same pid and camera as the query) is dropped as in the exact
    engine; a query without positives in the whole gallery is skipped."""
    q_pids, g_pids = np.asarray(q_pids).ravel(), np.asarray(g_pids).ravel()
    q_camids, g_camids = np.asarray(q_camids).ravel(), np.asarray(g_camids).ravel()
    if candidates.shape[0] != len(q_pids):
        raise ReidError(f"{candidates.shape[0]} candidate lists for {len(q_pids)} queries")
    num_pos, num_junk = _positive_counts(q_pids, g_pids, q_camids, g_camids)
    safe = np.maximum(candidates, 0)
    same_pid = g_pids[safe] == q_pids[:, None]
    keep = (candidates >= 0) & ~(same_pid & (g_camids[safe] == q_camids[:, None]))
    rank = np.cumsum(keep, axis=1)                     # 1-based rank among kept candidates
    positive = keep & same_pid
    hits_so_far = np.cumsum(positive, axis=1)
    valid = num_pos > 0
    if not valid.any():
        raise ReidError(f"no query has a valid gallery match (checked {len(q_pids)} queries "
                        f"against {len(g_pids)} gallery items; a match needs the same pid "
                        "seen by another camera)")
    precision = np.where(positive, hits_so_far / np.maximum(rank, 1), 0.0)
    ap = precision.sum(axis=1)[valid] / num_pos[valid]
    found = hits_so_far[:, -1] if candidates.shape[1] else np.zeros(len(q_pids), dtype=int)
    last_rank = np.where(positive, rank, 0).max(axis=1, initial=0)
    worst_rank = len(g_pids) - num_junk           # every non-junk item ranked before it
    complete = found == num_pos
    inp = (num_pos / np.where(complete, np.maximum(last_rank, 1), worst_rank))[valid]
    first = np.where(positive.any(axis=1), np.argmax(positive, axis=1), -1)
    first_rank = np.where(first >= 0, rank[np.arange(len(rank)), np.maximum(first, 0)],
                          np.iinfo(np.int64).max)[valid]
    length = min(max_rank, len(g_pids))
    cmc = (first_rank[:, None] <= np.arange(1, length + 1)[None, :]).mean(axis=0)
    return EvaluationResult(cmc=cmc, all_ap=ap, all_inp=inp, num_queries=len(q_pids))


def _positive_counts(q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, np.ndarray]:
    """Per query: gallery items with its pid from another camera (its positives), and with
    its pid from its own camera (junk)."""
    pid_codes = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)[1]
    cam_codes = np.unique(np.concatenate([q_camids, g_camids]), return_inverse=True)[1]
    num_q, cams = len(q_pids), int(cam_codes.max()) + 1
    q_pid, g_pid = pid_codes[:num_q], pid_codes[num_q:]
    q_pair = q_pid * cams + cam_codes[:num_q]
    g_pair = g_pid * cams + cam_codes[num_q:]
    same_pid = _count_in(g_pid, q_pid)
    junk = _count_in(g_pair, q_pair)
    return same_pid - junk, junk


def _count_in(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """How many times each of ``keys`` occurs in ``values``."""
    unique, counts = np.unique(values, return_counts=True)
    where = np.clip(np.searchsorted(unique, keys), 0, max(len(unique) - 1, 0))
    return np.where((len(unique) > 0) & (unique[where] == keys), counts[where], 0) \
        if len(unique) else np.zeros(len(keys), dtype=np.int64)
