"""k-reciprocal re-ranking against a dense transcription of the published algorithm.

``dense_rerank`` below is a straight, loop-by-loop transcription of Zhong et al.'s reference
``re_ranking`` with full ``N x N`` numpy matrices in float64; the library's sparse, streamed
implementation must give the same numbers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.errors import ReidError
from reid.evaluation.distance import compute_distance
from reid.evaluation.neighbors import METRIC_SPACES, all_pairs_knn
from reid.evaluation.rank import evaluate_rank
from reid.evaluation.rerank import ReRanker, rerank_distance


def dense_metric_distance(x: np.ndarray, metric: str) -> np.ndarray:
    """All-pairs distance from the definitions: 1 - cos, or the squared Euclidean distance."""
    if metric == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1.0 - unit @ unit.T
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)


def dense_rerank(q, g, k1, k2, lambda_value, metric, stats=None):
    """Zhong et al.'s re_ranking, transcribed with dense matrices (float64)."""
    x = np.concatenate([q, g]).astype(np.float64)
    num_q, num = len(q), len(x)
    original = dense_metric_distance(x, metric) ** 2
    original = original / original.max(axis=1, keepdims=True)
    initial_rank = np.argsort(original, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))

    def reciprocal(i, k):
        forward = initial_rank[i, :k + 1]
        backward = initial_rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    v = np.zeros((num, num))
    for i in range(num):
        r = reciprocal(i, k1)
        expansion = r
        for candidate in r:
            c = reciprocal(candidate, half)
            if len(np.intersect1d(c, r)) > 2.0 / 3 * len(c):
                expansion = np.append(expansion, c)
                if stats is not None:
                    stats["merged"] = stats.get("merged", 0) + (len(np.setdiff1d(c, r)) > 0)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(num)])

    jaccard = np.zeros((num_q, num))
    for i in range(num_q):
        m = np.zeros(num)
        for k in np.where(v[i] != 0)[0]:
            rows = np.where(v[:, k] != 0)[0]
            m[rows] += np.minimum(v[i, k], v[rows, k])
        jaccard[i] = 1 - m / (2 - m)
    final = jaccard * (1 - lambda_value) + original[:num_q] * lambda_value
    return final[:, num_q:]


def clustered_problem(seed, num_ids, per_id, num_query, dim=16, noise=0.6):
    """Identity centroids + Gaussian noise: neighbourhoods with real reciprocal structure."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(num_ids), per_id)
    feats = rng.standard_normal((num_ids, dim))[pids]
    feats += noise * rng.standard_normal((len(pids), dim))
    order = rng.permutation(len(pids))
    feats, pids = feats[order].astype(np.float32), pids[order]
    return feats[:num_query], feats[num_query:], pids[:num_query], pids[num_query:]


CASES = [
    # (seed, ids, images per id, queries, k1, k2, lambda)
    (0, 12, 8, 30, 20, 6, 0.3),
    (1, 20, 5, 17, 7, 3, 0.5),
    (2, 6, 10, 11, 5, 1, 0.0),
    (3, 30, 6, 50, 10, 4, 1.0),
    (4, 25, 8, 61, 20, 6, 0.3),
    (5, 8, 8, 9, 3, 2, 0.8),
    (6, 10, 6, 20, 3, 6, 0.4),  # k2 > k1 + 1: the neighbour lists must reach k2
]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed,ids,per_id,num_q,k1,k2,lam", CASES)
def test_rerank_distance_matches_dense_reference(metric, seed, ids, per_id, num_q, k1, k2, lam):
    q, g, _, _ = clustered_problem(seed, ids, per_id, num_q)
    stats = {}
    expected = dense_rerank(q, g, k1, k2, lam, metric, stats)
    got = rerank_distance(q, g, k1=k1, k2=k2, lambda_value=lam, metric=metric)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    if k1 >= 7:  # below that, a set more than 2/3 inside R(i) can bring no new item
        assert stats.get("merged", 0) > 0  # the merge step was really exercised


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_blocks_cover_all_queries_with_the_same_numbers(metric, block_size):
    q, g, _, _ = clustered_problem(7, 15, 9, 41)
    expected = dense_rerank(q, g, 9, 4, 0.3, metric)
    reranker = ReRanker(torch.from_numpy(q), torch.from_numpy(g), k1=9, k2=4, lambda_value=0.3,
                        metric=metric)
    stops = []
    for start, stop, block in reranker.blocks(block_size):
        assert block.dtype == np.float32 and block.shape == (stop - start, len(g))
        assert stop - start == min(block_size, len(q) - start)
        np.testing.assert_allclose(block, expected[start:stop], rtol=0, atol=1e-5)
        stops.append(stop)
    assert stops[-1] == len(q) and stops == sorted(stops)
    assert len(stops) == -(-len(q) // block_size)


def test_lambda_one_is_the_row_normalised_squared_distance():
    q, g, _, _ = clustered_problem(8, 10, 6, 13)
    x = np.concatenate([q, g])
    x = torch.from_numpy(x)
    all_dist = compute_distance(x, x, "cosine").astype(np.float64)
    row_max = (all_dist ** 2).max(axis=1)
    expected = compute_distance(torch.from_numpy(q), torch.from_numpy(g), "cosine") ** 2
    expected = expected / row_max[:len(q), None]
    got = rerank_distance(q, g, k1=6, k2=3, lambda_value=1.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_cosine_rerank_ignores_feature_scale():
    q, g, _, _ = clustered_problem(9, 10, 6, 13)
    scale = np.random.default_rng(0).uniform(0.5, 4.0, size=(len(q) + len(g), 1))
    scaled = np.concatenate([q, g]) * scale.astype(np.float32)
    np.testing.assert_allclose(rerank_distance(scaled[:13], scaled[13:], k1=6, k2=3),
                               rerank_distance(q, g, k1=6, k2=3), rtol=0, atol=1e-5)


def test_rerank_improves_map_on_clustered_data():
    q, g, q_pids, g_pids = clustered_problem(10, 30, 8, 60, dim=32, noise=1.1)
    q_cams, g_cams = np.zeros(len(q), int), np.ones(len(g), int)
    plain = compute_distance(torch.from_numpy(q), torch.from_numpy(g), "cosine")
    reranked = rerank_distance(q, g, k1=8, k2=3, lambda_value=0.3)
    _, ap_plain, _ = evaluate_rank(plain, q_pids, g_pids, q_cams, g_cams)
    _, ap_rerank, _ = evaluate_rank(reranked, q_pids, g_pids, q_cams, g_cams)
    assert ap_rerank.mean() > ap_plain.mean() + 0.01


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [5, 64, 500])
def test_all_pairs_knn_matches_argsort(metric, block_size):
    x = torch.from_numpy(np.random.default_rng(11).standard_normal((150, 8)).astype(np.float32))
    space = METRIC_SPACES.get(metric)
    nbrs = all_pairs_knn(space.prepare(x), 12, space, block_size)
    full = dense_metric_distance(x.double().numpy(), metric)
    np.testing.assert_array_equal(nbrs.indices.numpy(), np.argsort(full, axis=1)[:, :12])
    np.testing.assert_allclose(nbrs.distances.numpy(), np.sort(full, axis=1)[:, :12], atol=1e-5)
    np.testing.assert_allclose(nbrs.farthest.numpy(), full.max(axis=1), rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(k1=0), "1 <= k1 <="),
    (dict(k1=20), "k1 <= number of items - 1 = 19"),
    (dict(k2=0), "1 <= k2 <="),
    (dict(k2=21), "k2 <= number of items = 20"),
    (dict(lambda_value=1.5), "0 <= lambda_value <= 1"),
    (dict(metric="cosin"), "did you mean 'cosine'"),
])
def test_bad_parameters_raise_one_line_errors(kwargs, message):
    q, g, _, _ = clustered_problem(12, 4, 5, 6)
    with pytest.raises(ReidError, match=message) as info:
        rerank_distance(q, g, **{"k1": 3, "k2": 2, **kwargs})
    assert "\n" not in str(info.value)


def test_bad_features_raise():
    q, g, _, _ = clustered_problem(13, 4, 5, 6)
    with pytest.raises(ReidError, match="same dimension"):
        rerank_distance(q, g[:, :5], k1=3)
    with pytest.raises(ReidError, match="g_feats as a non-empty N x D matrix"):
        rerank_distance(q, g[:0], k1=3)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ReidError, match="q_feats contains NaN"):
        rerank_distance(bad, g, k1=3)
    with pytest.raises(ReidError, match="distinct features"):
        rerank_distance(np.ones((3, 4)), np.ones((5, 4)), k1=3, metric="euclidean")
    with pytest.raises(ReidError, match="block_size must be >= 1"):
        next(ReRanker(q, g, k1=3).blocks(0))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("knn_block", [7, 13, 100])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_kept_and_recomputed_query_gallery_distances_agree(monkeypatch, metric, knn_block,
                                                           keep_bytes):
    """Small search tiles straddle the query/gallery boundary and are used transposed: the
    distances kept from them, or recomputed per block (budget 0), give the dense numbers."""
    from reid.evaluation import neighbors
    from reid.evaluation import rerank as rerank_module
    monkeypatch.setattr(neighbors, "SEARCH_TILE", knn_block)
    monkeypatch.setattr(rerank_module, "_KEEP_DISTANCES_BYTES", keep_bytes)
    q, g, _, _ = clustered_problem(11, 15, 6, 23)
    reranker = ReRanker(q, g, k1=6, k2=3, lambda_value=0.4, metric=metric)
    assert (reranker._kept is not None) == (keep_bytes > 0)
    got = np.concatenate([dist for _, _, dist in reranker.blocks(5)])
    expected = dense_rerank(q, g, 6, 3, 0.4, metric)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
