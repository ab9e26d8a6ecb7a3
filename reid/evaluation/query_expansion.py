"""Average query expansion (``TEST.AQE``) with FastReID's semantics, streamed.

What is computed (FastReID's ``aqe``, i.e. alpha-weighted query expansion, Radenovic et al.,
applied to the database too, as in database-side augmentation):

* queries and gallery are expanded alike, over the ``N = Q + G`` items together;
* each round ranks all items by cosine similarity of the L2-normalised current features and
  takes each item's ``qe_k`` most similar items, *itself included* (its own similarity is 1,
  so it is normally the first of them);
* the item's new feature is the mean over those ``qe_k`` items of ``sim ** alpha * feature``,
  where ``feature`` is the current, *un-normalised* feature (the input in round 1);
* this repeats ``qe_time`` times; the returned features are those weighted means, not
  re-normalised, exactly as FastReID returns them. For the cosine metric this is the same as
  re-normalising; for the euclidean metric the scale of the means matters, as in FastReID.

``sim ** alpha`` follows floating-point ``pow``: a negative similarity with a fractional
``alpha`` gives NaN, as in FastReID (it needs ``qe_k`` reaching dissimilar items).

The similarities come from the streamed exact neighbour search of
``reid.evaluation.neighbors``: memory is the features (three copies) plus ``N x qe_k``, so the
expansion works at MSMT17 size; it runs on CUDA when available.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from reid.errors import ReidError
from reid.evaluation.neighbors import (METRIC_SPACES, all_pairs_knn, pick_device,
                                       query_gallery_features)

# Elements of the gathered ``rows x qe_k x D`` neighbour features held at once.
_GATHER_ELEMENTS = 1 << 24


def average_query_expansion(q_feats, g_feats, alpha: float = 3.0, qe_time: int = 1,
                            qe_k: int = 5, *, device: str | torch.device | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Expanded ``(query, gallery)`` features as float32 numpy arrays of the input shapes."""
    q, g = query_gallery_features(q_feats, g_feats, "query expansion")
    _check_parameters(alpha, qe_time, qe_k, q.shape[0] + g.shape[0])
    feats = torch.cat([q, g]).to(pick_device(device))
    with torch.no_grad():
        for _ in range(int(qe_time)):
            feats = _expand_once(feats, float(alpha), int(qe_k))
    feats = feats.cpu().numpy()
    return feats[:q.shape[0]], feats[q.shape[0]:]


def _expand_once(feats: torch.Tensor, alpha: float, qe_k: int) -> torch.Tensor:
    """One round: each row becomes the mean of ``sim ** alpha * feature`` over its top ``qe_k``."""
    cosine = METRIC_SPACES.get("cosine")
    unit = cosine.prepare(feats)
    neighbours = all_pairs_knn(unit, qe_k, cosine).indices
    expanded = torch.empty_like(feats)
    rows = max(1, _GATHER_ELEMENTS // (qe_k * feats.shape[1]))
    for lo in range(0, feats.shape[0], rows):
        picked = neighbours[lo:lo + rows]
        # Similarities as dot products again rather than 1 - (1 - cos): no cancellation.
        sims = (unit[lo:lo + rows, None, :] * unit[picked]).sum(dim=2)
        expanded[lo:lo + rows] = (sims.pow(alpha)[:, :, None] * feats[picked]).mean(dim=1)
    return expanded


def _check_parameters(alpha: float, qe_time: int, qe_k: int, num: int) -> None:
    if not math.isfinite(alpha):
        raise ReidError(f"query expansion needs a finite alpha (TEST.AQE.ALPHA), got {alpha}")
    if int(qe_time) != qe_time or qe_time < 0:
        raise ReidError(f"query expansion needs an integer qe_time >= 0 (TEST.AQE.QE_TIME), "
                        f"got {qe_time}")
    if int(qe_k) != qe_k or not 1 <= qe_k <= num:
        raise ReidError(f"query expansion needs 1 <= qe_k <= number of items = {num} "
                        f"(TEST.AQE.QE_K), got {qe_k}")
