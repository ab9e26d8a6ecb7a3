"""Rank metrics (and verification) straight from query and gallery features, streamed.

``evaluate_features`` never holds the ``Q x G`` distance matrix: it computes one block of
query rows at a time (a matrix product on the GPU when there is one, else on the CPU cores
with torch), hands the block to :class:`~reid.evaluation.streaming.StreamingEvaluation`, and
reuses the buffer for the next block. Optional steps, with FastReID's semantics:

* ``aqe=AqeOptions(alpha, qe_time, qe_k)``: average query expansion of the features first
  (:mod:`reid.evaluation.query_expansion`);
* ``rerank=RerankOptions(k1, k2, lambda_value)``: k-reciprocal re-ranked distances, streamed
  per block of queries (:mod:`reid.evaluation.rerank`);
* ``roc=True``: TAR at ``fars`` and the ROC curve (:mod:`reid.evaluation.roc`).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from reid.errors import ReidError
from reid.evaluation.approximate import DEFAULT_CANDIDATES
from reid.evaluation.distance import DISTANCE_METRICS, GalleryDistances
from reid.evaluation.options import AqeOptions, RerankOptions
from reid.evaluation.protocols import DEFAULT_PROTOCOL
from reid.evaluation.results import EvaluationResult
from reid.evaluation.roc import DEFAULT_FARS
from reid.evaluation.streaming import StreamingEvaluation
from reid.utils import comm

logger = logging.getLogger(__name__)

# Distances held per block: 2**25 float32 = 128 MiB (about 400 MSMT17 queries).
BLOCK_CELLS = 1 << 25
EXACT = "exact"  # the ``index`` of evaluate_features that ranks every gallery item


def evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids,
                      metric: str = "cosine", max_rank: int = 50,
                      protocol: str = DEFAULT_PROTOCOL, rerank: RerankOptions | None = None,
                      aqe: AqeOptions | None = None, roc: bool = False,
                      block_size: int | None = None, device: str | torch.device | None = None,
                      fars: tuple[float, ...] = DEFAULT_FARS,
                      observe: Callable[[int, np.ndarray], None] | None = None,
                      index: str = EXACT, candidates: int = DEFAULT_CANDIDATES,
                      index_params: str | None = None) -> EvaluationResult:
    """CMC, mAP, mINP, per-query AP and INP (and TAR@FAR, ROC) from features.

    Args:
        q_feats, g_feats: ``Q x D`` and ``G x D`` features (numpy or torch; float32 CPU
            input is used without a copy).
        q_pids, g_pids, q_camids, g_camids: identities and cameras.
        metric: "cosine" (``1 - cos``) or "euclidean" (squared L2), as FastReID.
        max_rank, protocol: as :func:`reid.evaluation.rank.evaluate_rank`.
        rerank, aqe: :class:`~reid.evaluation.options.RerankOptions` and
            :class:`~reid.evaluation.options.AqeOptions` (see the module docstring), or None.
        roc: also compute TAR at each FAR of ``fars`` and the ROC curve.
        block_size: query rows per distance block (default: about 128 MiB of distances).
        device: where distances are computed (default: CUDA when available, else CPU).
        observe: called as ``observe(start, rows)`` with every block of distance rows (the
            ones the metrics use) before it is ranked; the buffer is reused afterwards, so
            copy what you keep (e.g. :class:`reid.evaluation.examples.ExampleCollector`).
        index: "exact" (default: every gallery item ranked, as above), or a faiss factory
            string (e.g. "IVF1024,PQ64"): approximate evaluation, metrics from each query's
            top-``candidates`` of that index (LOWER BOUNDS of the exact ones), with their
            recall against exact search as ``candidate_recall``
            (:mod:`reid.evaluation.approximate`; Market protocol, no re-ranking or ROC).
            ``index_params``: its faiss search parameters (e.g. "nprobe=32"). "bf16": the
            candidates of a bfloat16 scan of every gallery row on ``device``
            (:mod:`reid.retrieval.bf16_scan`).

    Returns:
        an :class:`~reid.evaluation.results.EvaluationResult`: ``cmc``, ``all_ap`` and
        ``all_inp`` (fractions, one per valid query), ``mAP``, ``mINP``, and ``roc`` /
        ``tar_at_far`` when ``roc`` is true; ``summary()`` gives the percent metrics.
    """
    DISTANCE_METRICS.get(metric)  # an unknown metric fails before any work
    _check_type(rerank, RerankOptions, "rerank")
    _check_type(aqe, AqeOptions, "aqe")
    if index != EXACT:
        _check_approximate(index, protocol, rerank, roc, observe)
    q_feats, g_feats = _features(q_feats, "q_feats"), _features(g_feats, "g_feats")
    _check_counts(q_feats, g_feats, q_pids, g_pids)
    device = _pick_device(device)
    if aqe is not None:
        q_feats, g_feats = _expand_queries(q_feats, g_feats, aqe, device)
    if index != EXACT:
        from reid.evaluation.approximate import approximate_evaluation
        return approximate_evaluation(q_feats.numpy(), g_feats.numpy(), q_pids, g_pids,
                                      q_camids, g_camids, index, metric, max_rank, candidates,
                                      search_params=index_params, device=device)
    if block_size is not None and block_size < 1:
        raise ReidError(f"evaluate_features: block_size must be >= 1, got {block_size}")
    rows = block_size or max(1, min(len(q_feats), BLOCK_CELLS // max(len(g_feats), 1)))
    with StreamingEvaluation(q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                             protocol=protocol, roc=roc, fars=fars) as evaluation:
        # Plain distances computed on a GPU are ranked there too (``on_device``).
        blocks = (_reranked_blocks(q_feats, g_feats, rerank, metric, rows, device)
                  if rerank is not None
                  else GalleryDistances(g_feats, metric, device).blocks(q_feats, rows))
        # A progress bar updated by hand: one wrapping the iterator would keep the previous
        # block alive while the next is computed (two blocks of memory instead of one).
        progress = tqdm(total=-(-len(q_feats) // rows), desc="evaluate", unit="block",
                        leave=False, disable=not comm.is_main_process() or len(q_feats) <= rows)
        with progress:
            for start, _, distances, on_device in blocks:
                if observe is not None:
                    observe(start, distances)
                evaluation.add(start, distances, on_device)
                del distances, on_device
                progress.update()
        return evaluation.result()


def _reranked_blocks(q_feats, g_feats, options: RerankOptions, metric: str, rows: int,
                     device: torch.device
                     ) -> Iterator[tuple[int, int, np.ndarray, torch.Tensor | None]]:
    """Re-ranked blocks as ``GalleryDistances.blocks`` yields them. The rows are combined on
    the CPU; with a GPU they are copied there to be ranked (a 1,000 x 82,161 block crosses in
    milliseconds; ranking it on 2-16 CPU cores takes a second or more)."""
    from reid.evaluation.rerank import ReRanker  # heavy: only imported when re-ranking

    logger.info("k-reciprocal re-ranking %s", asdict(options))
    reranker = ReRanker(q_feats, g_feats, k1=options.k1, k2=options.k2,
                        lambda_value=options.lambda_value, metric=metric, device=device)
    for start, stop, distances in reranker.blocks(rows):
        on_device = torch.from_numpy(distances).to(device) if device.type == "cuda" else None
        yield start, stop, distances, on_device
        del distances, on_device  # freed before the next block is computed


def _expand_queries(q_feats, g_feats, options: AqeOptions, device: torch.device):
    from reid.evaluation.query_expansion import average_query_expansion

    logger.info("average query expansion %s", asdict(options))
    return average_query_expansion(q_feats, g_feats, alpha=options.alpha,
                                   qe_time=options.qe_time, qe_k=options.qe_k, device=device)


def _check_approximate(index: str, protocol: str, rerank, roc: bool, observe) -> None:
    """What approximate evaluation cannot do: it never sees a whole row of distances."""
    unsupported = [name for name, used in (("re-ranking", rerank is not None), ("the ROC", roc),
                                           ("observe", observe is not None),
                                           (f"the {protocol} protocol", protocol != "market"))
                   if used]
    if unsupported:
        raise ReidError(f"approximate evaluation (index {index!r}) ranks only each query's "
                        f"top candidates: it cannot do {', '.join(unsupported)}; use "
                        "index='exact'")


def _check_type(options, expected: type, name: str) -> None:
    """``None`` or the typed options; a plain dict names the converter."""
    if options is not None and not isinstance(options, expected):
        raise ReidError(f"evaluate_features: {name} takes {expected.__name__} or None, got "
                        f"{type(options).__name__} (a dict converts with "
                        f"{expected.__name__}.from_mapping)")


def _features(feats, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(feats)
    if tensor.ndim != 2:
        raise ReidError(f"evaluate_features expects {name} as an N x D matrix, "
                        f"got shape {tuple(tensor.shape)}")
    return tensor.float()


def _check_counts(q_feats: torch.Tensor, g_feats: torch.Tensor, q_pids, g_pids) -> None:
    if q_feats.shape[1] != g_feats.shape[1]:
        raise ReidError(f"evaluate_features expects query and gallery features of the same "
                        f"dimension, got {tuple(q_feats.shape)} and {tuple(g_feats.shape)}")
    for name, feats, pids in (("query", q_feats, q_pids), ("gallery", g_feats, g_pids)):
        if len(feats) != np.size(pids):
            raise ReidError(f"evaluate_features: {len(feats)} {name} features but "
                            f"{np.size(pids)} {name} pids")


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
