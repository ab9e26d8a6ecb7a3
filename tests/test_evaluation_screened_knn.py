"""The bfloat16-screened cosine search returns exactly the float32 brute force's neighbours."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid.evaluation import screened_knn
from reid.evaluation.screened_knn import (BF16_UNIT_ROUNDOFF, _rounding_slack,
                                          screened_cosine_knn)


def clustered_unit_rows(num: int, dim: int, clusters: int, noise: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen)
    labels = torch.arange(num) % clusters
    x = centres[labels] + noise * torch.randn(num, dim, generator=gen)
    return F.normalize(x, dim=1)


def brute_force(unit: torch.Tensor, k: int):
    """float64 distances, sorted by (distance, index) with numpy's lexsort."""
    dist = 1.0 - unit.double() @ unit.double().t()
    order = np.stack([np.lexsort((np.arange(len(row)), row)) for row in dist.numpy()])
    top = order[:, :k]
    return np.take_along_axis(dist.numpy(), top, 1), top, dist.numpy().max(axis=1)


@pytest.mark.parametrize("num,dim,k,block,margin", [
    (300, 64, 7, 128, None), (257, 33, 21, 64, 2), (90, 16, 5, 4096, 0)])
def test_matches_brute_force(num, dim, k, block, margin):
    unit = clustered_unit_rows(num, dim, clusters=num // 6, noise=0.6, seed=num)
    nbrs = screened_cosine_knn(unit, k, block_size=block, margin=margin)
    want_dist, want_index, want_far = brute_force(unit, k)
    np.testing.assert_allclose(nbrs.distances.numpy(), want_dist, atol=2e-6)
    # Indices may only differ where the float32 and float64 distances tie.
    differs = nbrs.indices.numpy() != want_index
    assert np.all(np.abs(want_dist[differs] - np.sort(want_dist, 1)[differs]) < 2e-6)
    assert differs.mean() < 0.01
    np.testing.assert_allclose(nbrs.farthest.numpy(), want_far, atol=2e-6)


def test_duplicates_force_the_exact_fallback_and_stay_exact(monkeypatch):
    """Exact duplicates tie far beyond the margin: the bound fails there, the rows are redone."""
    base = clustered_unit_rows(40, 24, clusters=4, noise=0.3, seed=3)
    unit = torch.cat([base] * 6)  # every row has 5 identical copies
    redone = []
    original = screened_knn._search_exactly

    def spy(unit_, k_, rows, *args, **kwargs):
        redone.append(rows.numel())
        return original(unit_, k_, rows, *args, **kwargs)

    monkeypatch.setattr(screened_knn, "_search_exactly", spy)
    nbrs = screened_cosine_knn(unit, 4, block_size=64, margin=1)
    assert redone and redone[0] > 0
    want_dist, want_index, want_far = brute_force(unit, 4)
    np.testing.assert_allclose(nbrs.distances.numpy(), want_dist, atol=2e-6)
    np.testing.assert_allclose(nbrs.farthest.numpy(), want_far, atol=2e-6)
    # The 4 nearest of a row are copies of itself (distance ~0), by index order.
    copies = (nbrs.indices.numpy() % 40) == (np.arange(240)[:, None] % 40)
    assert copies.all()


def test_rounding_bound_holds_on_every_pair():
    """|bf16 product - exact| <= 2u|s~| + E_i for all pairs of random and clustered rows."""
    for unit in (F.normalize(torch.randn(400, 256), dim=1),
                 clustered_unit_rows(400, 512, clusters=20, noise=0.2, seed=1)):
        low = unit.bfloat16()
        approx = (low @ low.t()).float().double()
        exact = unit.double() @ unit.double().t()
        slack = _rounding_slack(unit, low)
        bound = 2 * BF16_UNIT_ROUNDOFF * approx.abs() + slack[:, None]
        assert ((approx - exact).abs() <= bound).all()
        assert (approx - exact).abs().max() > 0  # bf16 really is inexact here


def test_cosine_knn_picks_the_plain_search_for_small_problems(monkeypatch):
    unit = clustered_unit_rows(50, 8, clusters=5, noise=0.5, seed=0)
    monkeypatch.setattr(screened_knn, "screened_cosine_knn",
                        lambda *a, **k: pytest.fail("small problems must not be screened"))
    nbrs = screened_knn.cosine_knn(unit, 3)
    np.testing.assert_allclose(nbrs.distances.numpy(), brute_force(unit, 3)[0], atol=2e-6)
