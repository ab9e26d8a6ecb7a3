"""Evaluate a model on a test loader: extract -> distance -> rank metrics -> percents."""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from reid.errors import ReidError
from reid.evaluation.distance import compute_distance
from reid.evaluation.extract import extract_features
from reid.evaluation.rank import evaluate_rank, summarize

logger = logging.getLogger(__name__)


def evaluate_model(model: nn.Module, data_loader, num_query: int, device: torch.device | str,
                   metric: str = "cosine", flip: bool = False,
                   max_rank: int = 50) -> dict[str, float]:
    """Rank-1/5/10, mAP, mINP in percent; the loader's first ``num_query`` items are queries."""
    feats, pids, camids = extract_features(model, data_loader, device, flip=flip)
    results = evaluate_features(feats, pids, camids, num_query, metric=metric, max_rank=max_rank)
    logger.info("evaluation (%s distance%s): %s", metric, ", flip test" if flip else "",
                ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    return results


def evaluate_features(feats: torch.Tensor, pids: np.ndarray, camids: np.ndarray,
                      num_query: int, metric: str = "cosine",
                      max_rank: int = 50) -> dict[str, float]:
    """The same metrics from already extracted features (queries first, then gallery)."""
    total = len(pids)
    if not 0 < num_query < total:
        raise ReidError(f"num_query must split the {total} extracted items into queries and "
                        f"a non-empty gallery, got num_query={num_query}")
    distmat = compute_distance(feats[:num_query], feats[num_query:], metric)
    cmc, all_ap, all_inp = evaluate_rank(distmat, pids[:num_query], pids[num_query:],
                                         camids[:num_query], camids[num_query:], max_rank=max_rank)
    return summarize(cmc, all_ap, all_inp)
