"""compute_distance against per-pair loops written from the definitions."""
import math

import numpy as np
import pytest
import torch

from reid.errors import ReidError
from reid.evaluation.distance import compute_distance


def brute_cosine(q, g):
    out = np.zeros((len(q), len(g)))
    for i, a in enumerate(q):
        for j, b in enumerate(g):
            dot = sum(x * y for x, y in zip(a, b))
            norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
            out[i, j] = 1.0 - dot / norms
    return out


def brute_squared_euclidean(q, g):
    out = np.zeros((len(q), len(g)))
    for i, a in enumerate(q):
        for j, b in enumerate(g):
            out[i, j] = sum((x - y) ** 2 for x, y in zip(a, b))
    return out


@pytest.fixture
def features():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(7, 5, generator=gen) * 3
    g = torch.randn(11, 5, generator=gen) * 3
    return q, g


@pytest.mark.parametrize("metric,reference", [
    ("cosine", brute_cosine),
    ("euclidean", brute_squared_euclidean),
])
def test_matches_brute_force(features, metric, reference):
    q, g = features
    dist = compute_distance(q, g, metric)
    assert isinstance(dist, np.ndarray) and dist.dtype == np.float32
    assert dist.shape == (7, 11)
    expected = reference(q.double().tolist(), g.double().tolist())
    np.testing.assert_allclose(dist, expected, rtol=1e-5, atol=1e-4)


def test_known_values():
    q = torch.tensor([[3.0, 4.0]])
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-6.0, -8.0], [4.0, -3.0]])
    np.testing.assert_allclose(compute_distance(q, g, "euclidean")[0], [0, 25, 225, 50],
                               atol=1e-4)
    # cosine distance of the zero vector: normalisation leaves it at 0, so 1 - 0 = 1.
    np.testing.assert_allclose(compute_distance(q, g, "cosine")[0], [0, 1, 2, 1], atol=1e-6)


def test_identical_features_never_give_negative_euclidean():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(50, 64, generator=gen) * 100
    dist = compute_distance(feats, feats, "euclidean")
    assert dist.min() >= 0.0
    # |q|^2 + |g|^2 - 2 q.g cancels in float32: the error scales with the squared norms.
    scale = float(feats.pow(2).sum(dim=1).max())
    np.testing.assert_allclose(np.diag(dist), 0.0, atol=1e-6 * scale)


def test_unknown_metric_lists_valid_ones(features):
    with pytest.raises(ReidError, match=r"unknown distance metric 'cosin'.*cosine, euclidean"):
        compute_distance(*features, "cosin")


def test_mismatched_dimensions_are_an_error():
    with pytest.raises(ReidError, match=r"same D, got \(2, 3\) and \(4, 5\)"):
        compute_distance(torch.zeros(2, 3), torch.zeros(4, 5), "cosine")


@pytest.mark.parametrize("fast_kernel", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_nt_matches_float64_products(monkeypatch, fast_kernel, with_bias):
    # Both kernels (oneDNN where torch has it, torch.mm / addmm otherwise) give a @ b.T + bias.
    from reid.evaluation import distance
    if not fast_kernel:
        monkeypatch.setattr(distance, "_onednn_product_available", lambda: False)
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(37, 300, generator=gen), torch.randn(53, 300, generator=gen)
    bias = torch.randn(53, generator=gen) if with_bias else None
    expected = a.double() @ b.double().t() + (0.0 if bias is None else bias.double())
    got = distance.matmul_nt(a, b, bias)
    assert got.shape == (37, 53) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, atol=1e-4, rtol=0)
    # Non-contiguous operands give the same numbers.
    wide = torch.zeros(53, 600)
    wide[:, ::2] = b
    assert torch.allclose(distance.matmul_nt(a, wide[:, ::2], bias), got, atol=1e-5, rtol=0)


def test_all_finite_sees_nan_and_both_infinities():
    from reid.evaluation.distance import all_finite
    x = torch.randn(200, 30)
    assert all_finite(x) and all_finite(torch.empty(0, 3))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[123, 7] = bad
        assert not all_finite(y)


def test_nearest_candidates_order_ties_by_id_and_missing_last():
    """Equal distances (the same row under three ids): the lower id first, as exact search
    orders them; a missing candidate (-1) last with an infinite distance; k cuts after the
    order."""
    from reid.evaluation.distance import nearest_candidates
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    rows = {9: [3.0, 1.0], 4: [3.0, 1.0], 7: [3.0, 1.0], 2: [1.0, 1.0], 5: [1.0, 0.1]}
    found = np.array([[9, -1, 4, 2, 7, 5]])
    vectors = np.array([[rows.get(i, [0.0, 0.0]) for i in found[0]]], dtype=np.float32)
    ids, dist = nearest_candidates(query, found, vectors, 6, "cosine")
    assert ids.tolist() == [[5, 4, 7, 9, 2, -1]]
    expected = [1 - 1 / np.hypot(1, 0.1), *[1 - 3 / np.hypot(3, 1)] * 3, 1 - 1 / np.sqrt(2)]
    np.testing.assert_allclose(dist[0, :5], expected, rtol=1e-6, atol=1e-6)
    assert np.isinf(dist[0, 5])
    top2, _ = nearest_candidates(query, found, vectors, 2, "cosine")
    assert top2.tolist() == [[5, 4]]
