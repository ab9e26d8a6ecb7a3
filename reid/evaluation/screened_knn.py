"""Exact cosine k-nearest neighbours, screened with bfloat16 products on the CPU.

The all-pairs neighbour search of re-ranking and query expansion is one ``N x N x D`` matrix
product (0.76 TFLOP for the Market-sized problem, N = 19,281, D = 2,048). On CPUs with native
bfloat16 dot products (AVX512-BF16, AMX) a bfloat16 product runs about 3x faster than float32,
but its similarities are off by up to ~1e-3, enough to swap near neighbours. So the bfloat16
pass only *screens*: it keeps each item's ``m > k`` best candidates (and ``f`` worst, for the
farthest distance); those are rescored exactly in float32, and a rounding-error bound proves,
per item, that no item left out could have been closer than the exact k-th neighbour (or
farther than the exact farthest one). Items the bound cannot clear are searched again exactly
over all items. The result is the exact search's, not an approximation.

The bound, for unit rows ``x`` rounded to ``x~ = bf16(x)`` with residual ``r = x - x~``:
``x.y = x~.y~ + x~.r_y + r_x.y~ + r_x.r_y``, so by Cauchy-Schwarz the rounding of the inputs
moves a similarity by at most ``E_i = |x~_i| R + |r_i| X + |r_i| R`` (``R``, ``X``: the
largest ``|r|`` and ``|x~|``) plus float32 accumulation ``1.01 D 2^-24 |x~_i| X``; rounding
the product to bfloat16 adds at most ``2u |s~|`` (``u = 2^-8``, doubled to also cover
truncation).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from reid.evaluation.neighbors import (METRIC_SPACES, Neighbours, RunningBest, all_pairs_knn,
                                       symmetric_tiles)

BF16_UNIT_ROUNDOFF = 2.0 ** -8
FP32_UNIT_ROUNDOFF = 2.0 ** -24
# Elements of the gathered ``rows x candidates x D`` features rescored at once (64 MB).
_GATHER_ELEMENTS = 1 << 24
# Below this many multiply-adds the float32 search is fast anyway: not worth screening.
_MIN_SCREENED_WORK = 1e10


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (Linux flags avx512_bf16 or amx_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def worth_screening(feats: torch.Tensor) -> bool:
    """Screen on a bfloat16-capable CPU when the search is big enough to matter."""
    num, dim = feats.shape
    return feats.device.type == "cpu" and num * num * dim >= _MIN_SCREENED_WORK \
        and cpu_has_fast_bf16()


def screened_cosine_knn(unit: torch.Tensor, k: int, block_size: int = 4096,
                        margin: int | None = None, far_candidates: int = 16) -> Neighbours:
    """The ``k`` nearest rows of every row of L2-normalised ``unit`` under ``1 - cos``.

    Same result as ``all_pairs_knn(unit, k, METRIC_SPACES.get("cosine").block)``, ties broken
    by item index. ``margin``: candidates kept per row beyond ``k`` (default ``max(2k, 16)``).
    """
    num = unit.shape[0]
    near_width = min(num, k + (max(2 * k, 16) if margin is None else margin))
    far_width = min(num, far_candidates)
    low = unit.bfloat16()
    near = RunningBest(num, near_width, unit.device, track_farthest=False)  # on -similarity
    far = RunningBest(num, far_width, unit.device, track_farthest=False)    # on similarity
    with torch.no_grad():
        for a, b in symmetric_tiles(num, block_size, "screened neighbour search"):
            sims = (low[a:a + block_size] @ low[b:b + block_size].t()).float()
            _absorb_both_ways(near, a, sims.neg(), b)
            _absorb_both_ways(far, a, sims, b)
        return _rescored(unit, low, k, near, far)


def _absorb_both_ways(best: RunningBest, a: int, tile: torch.Tensor, b: int) -> None:
    best.absorb(a, tile, b)
    if a != b:
        best.absorb(b, tile.t(), a)


def _rescored(unit: torch.Tensor, low: torch.Tensor, k: int, near: RunningBest,
              far: RunningBest) -> Neighbours:
    """Exact distances of the candidates; rows the bound cannot clear are searched exactly."""
    num = unit.shape[0]
    slack = _rounding_slack(unit, low)
    near_sim = _exact_similarities(unit, near.index)
    dist, index = _sorted_by_distance(1.0 - near_sim, near.index)
    dist, index = dist[:, :k].contiguous(), index[:, :k].contiguous()
    # Best similarity any item outside the candidates could have: under the k-th exact one?
    screened_last = -near.dist[:, -1].double()
    outside_best = screened_last + 2 * BF16_UNIT_ROUNDOFF * screened_last.abs() + slack
    cleared = (outside_best < (1.0 - dist[:, -1]).double()) | (near.k == num)
    # Worst similarity an outside item could have: above the exact worst candidate?
    far_sim = _exact_similarities(unit, far.index).amin(dim=1)
    screened_worst = far.dist[:, -1].double()
    outside_worst = screened_worst - 2 * BF16_UNIT_ROUNDOFF * screened_worst.abs() - slack
    cleared &= (outside_worst >= far_sim.double()) | (far.k == num)
    farthest = 1.0 - far_sim
    _search_exactly(unit, k, torch.nonzero(~cleared).flatten(), dist, index, farthest)
    return Neighbours(dist, index, farthest)


def _rounding_slack(unit: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Per row, the bound ``E_i`` on how far input rounding and accumulation move a similarity."""
    rounded = low.double()
    residual = (unit.double() - rounded).norm(dim=1)
    norm = rounded.norm(dim=1)
    most_residual, most_norm = residual.max(), norm.max()
    accumulation = 1.01 * unit.shape[1] * FP32_UNIT_ROUNDOFF * norm * most_norm
    return norm * most_residual + residual * most_norm + residual * most_residual + accumulation


def _exact_similarities(unit: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """float32 ``unit[i] . unit[index[i, t]]`` for every row ``i`` and candidate ``t``."""
    out = torch.empty(index.shape, dtype=unit.dtype, device=unit.device)
    rows = max(1, _GATHER_ELEMENTS // (index.shape[1] * unit.shape[1]))
    for lo in range(0, index.shape[0], rows):
        picked = unit[index[lo:lo + rows]]
        out[lo:lo + rows] = torch.bmm(picked, unit[lo:lo + rows, :, None]).squeeze(2)
    return out


def _sorted_by_distance(dist: torch.Tensor, index: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted by distance, equal distances in item-index order."""
    index, by_index = index.sort(dim=1)
    dist = dist.gather(1, by_index)
    dist, by_dist = dist.sort(dim=1, stable=True)
    return dist, index.gather(1, by_dist)


def _search_exactly(unit: torch.Tensor, k: int, rows: torch.Tensor, dist: torch.Tensor,
                    index: torch.Tensor, farthest: torch.Tensor, chunk: int = 256) -> None:
    """Overwrite ``rows`` of the results with a float32 search over all items."""
    everything = torch.arange(unit.shape[0], device=unit.device)
    for lo in range(0, rows.numel(), chunk):
        picked = rows[lo:lo + chunk]
        full = torch.addmm(unit.new_ones(1, 1), unit[picked], unit.t(), alpha=-1.0)
        row_dist, row_index = _sorted_by_distance(full, everything.expand_as(full))
        dist[picked], index[picked] = row_dist[:, :k], row_index[:, :k]
        farthest[picked] = full.amax(dim=1)


def cosine_knn(unit: torch.Tensor, k: int, block_size: int = 4096) -> Neighbours:
    """Exact cosine neighbours: screened where that is faster, plain float32 otherwise."""
    if worth_screening(unit):
        return screened_cosine_knn(unit, k, block_size)
    return all_pairs_knn(unit, k, METRIC_SPACES.get("cosine").block, block_size)
