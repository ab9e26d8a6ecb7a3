"""evaluate_features (streamed from features) against evaluate_rank on the full distance matrix."""
import numpy as np
import pytest
import torch

from reid.errors import ReidError
from reid.evaluation import query_expansion, rerank, streaming
from reid.evaluation.distance import compute_distance
from reid.evaluation.features import evaluate_features
from reid.evaluation.options import AqeOptions, RerankOptions
from reid.evaluation.rank import evaluate_rank
from reid.evaluation.streaming import StreamingEvaluation


def labelled_features(seed, num_q=23, num_g=70, dim=6, integer=True):
    """Small-integer features make every distance exact in float32, so equal distances are
    exactly equal however the rows are blocked (the tie rule is then what decides)."""
    rng = np.random.default_rng(seed)
    if integer:
        q = rng.integers(-2, 3, size=(num_q, dim)).astype(np.float32)
        g = rng.integers(-2, 3, size=(num_g, dim)).astype(np.float32)
    else:
        q = rng.standard_normal((num_q, dim)).astype(np.float32)
        g = rng.standard_normal((num_g, dim)).astype(np.float32)
    ids = dict(q_pids=rng.integers(0, 8, num_q), g_pids=rng.integers(0, 10, num_g),
               q_camids=rng.integers(0, 3, num_q), g_camids=rng.integers(0, 3, num_g))
    return q, g, ids


def assert_same_metrics(result, expected):
    cmc, all_ap, all_inp = expected
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.all_ap, all_ap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.all_inp, all_inp, rtol=0, atol=1e-6)
    assert result.mAP == pytest.approx(float(np.mean(all_ap)), abs=1e-6)
    assert result.mINP == pytest.approx(float(np.mean(all_inp)), abs=1e-6)


def rank_of(dist, ids, **kwargs):
    return evaluate_rank(dist, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"],
                         **kwargs)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [1, 4, 7, 22, 100, None])
def test_blocks_agree_with_the_full_matrix(metric, block_size):
    q, g, ids = labelled_features(0)
    dist = compute_distance(q, g, metric)
    assert any(len(np.unique(row)) < len(row) for row in dist)  # ties are present
    result = evaluate_features(q, g, **ids, metric=metric, block_size=block_size)
    assert_same_metrics(result, rank_of(dist, ids))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_float_features_torch_input_and_cuhk03(metric):
    q, g, ids = labelled_features(1, integer=False)
    dist = compute_distance(q, g, metric)
    result = evaluate_features(torch.from_numpy(q), torch.from_numpy(g).double(), **ids,
                               metric=metric, block_size=5, protocol="cuhk03", max_rank=7)
    assert_same_metrics(result, rank_of(dist, ids, protocol="cuhk03", max_rank=7))


def test_distance_blocks_are_bounded(monkeypatch):
    q, g, ids = labelled_features(2)
    seen = []
    original = StreamingEvaluation.add
    monkeypatch.setattr(StreamingEvaluation, "add",
                        lambda self, start, rows, device_rows=None: (
                            seen.append((start, rows.shape, device_rows)),
                            original(self, start, rows, device_rows)))
    evaluate_features(q, g, **ids, block_size=6)
    # On the CPU no block comes with a GPU copy.
    assert seen == [(0, (6, 70), None), (6, (6, 70), None), (12, (6, 70), None),
                    (18, (5, 70), None)]


def test_roc_from_features_matches_the_matrix():
    q, g, ids = labelled_features(3, integer=False)
    result = evaluate_features(q, g, **ids, roc=True, fars=(0.01, 0.1), block_size=4)
    with StreamingEvaluation(**ids, roc=True, fars=(0.01, 0.1)) as evaluation:
        evaluation.add(0, compute_distance(q, g))
        expected = evaluation.result().roc
    assert result.tar_at_far == expected.tar_at_far
    np.testing.assert_array_equal(result.roc.curve.far, expected.curve.far)


class StubReRanker:
    """Stands in for reid.evaluation.rerank.ReRanker: negated cosine distances, any blocks."""

    calls = []

    def __init__(self, q_feats, g_feats, k1=20, k2=6, lambda_value=0.3, metric="cosine",
                 device=None):
        StubReRanker.calls.append(dict(k1=k1, k2=k2, lambda_value=lambda_value, metric=metric,
                                       device=str(device)))
        self.dist = -compute_distance(q_feats, g_feats, metric)

    def blocks(self, block_size):
        for start in range(0, len(self.dist), block_size):
            stop = min(start + block_size, len(self.dist))
            yield start, stop, self.dist[start:stop]


def test_rerank_blocks_are_what_gets_ranked(monkeypatch):
    monkeypatch.setattr(rerank, "ReRanker", StubReRanker)
    StubReRanker.calls = []
    q, g, ids = labelled_features(4)
    result = evaluate_features(q, g, **ids, metric="euclidean", block_size=9, device="cpu",
                               rerank=RerankOptions(k1=7, k2=3, lambda_value=0.5))
    assert StubReRanker.calls == [dict(k1=7, k2=3, lambda_value=0.5, metric="euclidean",
                                       device="cpu")]
    assert_same_metrics(result, rank_of(-compute_distance(q, g, "euclidean"), ids))


def test_aqe_features_are_what_gets_compared(monkeypatch):
    calls = []

    def stub_aqe(q_feats, g_feats, alpha=3.0, qe_time=1, qe_k=5, device=None):
        calls.append(dict(alpha=alpha, qe_time=qe_time, qe_k=qe_k))
        return np.asarray(q_feats)[:, ::-1].copy(), np.asarray(g_feats) * 2.0

    monkeypatch.setattr(query_expansion, "average_query_expansion", stub_aqe)
    q, g, ids = labelled_features(5)
    result = evaluate_features(q, g, **ids, metric="euclidean",
                               aqe=AqeOptions(alpha=2.0, qe_time=2, qe_k=4))
    assert calls == [dict(alpha=2.0, qe_time=2, qe_k=4)]
    expected_dist = compute_distance(q[:, ::-1].copy(), g * 2.0, "euclidean")
    assert_same_metrics(result, rank_of(expected_dist, ids))


def test_real_rerank_and_aqe_are_wired_in():
    # The real implementations (no stubs): streaming equals their dense results.
    q, g, ids = labelled_features(6, num_q=15, num_g=40, dim=8, integer=False)
    params = dict(k1=6, k2=3, lambda_value=0.3)
    reranked = rerank.rerank_distance(q, g, metric="cosine", device="cpu", **params)
    result = evaluate_features(q, g, **ids, rerank=RerankOptions(**params), block_size=4,
                               device="cpu")
    assert_same_metrics(result, rank_of(reranked, ids))

    aqe = dict(alpha=3.0, qe_time=1, qe_k=3)
    q_x, g_x = query_expansion.average_query_expansion(q, g, device="cpu", **aqe)
    result = evaluate_features(q, g, **ids, aqe=AqeOptions(**aqe), device="cpu")
    assert_same_metrics(result, rank_of(compute_distance(q_x, g_x), ids))


@pytest.mark.parametrize("kwargs,message", [
    (dict(metric="cosin"), r"unknown distance metric 'cosin'; did you mean 'cosine'"),
    (dict(block_size=0), r"block_size must be >= 1, got 0"),
])
def test_bad_arguments_are_errors(kwargs, message):
    q, g, ids = labelled_features(7)
    with pytest.raises(ReidError, match=message):
        evaluate_features(q, g, **ids, **kwargs)


# Re-ranking and query expansion options are typed; a plain mapping converts once
# (``from_mapping``), where an unknown name is an error.
@pytest.mark.parametrize("options,values,message", [
    (RerankOptions, dict(k1=5, lam=0.3), r"rerank takes the parameters k1, k2, lambda_value; "
                                         r"got unknown lam"),
    (AqeOptions, dict(alpha=3.0, k=2), r"aqe takes the parameters alpha, qe_time, qe_k; "
                                       r"got unknown k"),
])
def test_unknown_option_names_are_errors(options, values, message):
    with pytest.raises(ReidError, match=message):
        options.from_mapping(values)


def test_options_from_a_mapping_and_untyped_options_are_errors():
    assert RerankOptions.from_mapping(dict(k1=5, lambda_value=0.1)) == RerankOptions(
        k1=5, k2=6, lambda_value=0.1)
    assert AqeOptions.from_mapping({}) == AqeOptions(alpha=3.0, qe_time=1, qe_k=5)
    q, g, ids = labelled_features(7)
    with pytest.raises(ReidError, match=r"rerank takes RerankOptions or None, got dict "
                                        r"\(a dict converts with RerankOptions.from_mapping\)"):
        evaluate_features(q, g, **ids, rerank=dict(k1=5))
    with pytest.raises(ReidError, match=r"aqe takes AqeOptions or None, got dict"):
        evaluate_features(q, g, **ids, aqe=dict(alpha=3.0))


def test_mismatched_inputs_are_errors():
    q, g, ids = labelled_features(8)
    with pytest.raises(ReidError, match=r"same dimension, got \(23, 6\) and \(70, 5\)"):
        evaluate_features(q, g[:, :5], **ids)
    with pytest.raises(ReidError, match="23 query features but 22 query pids"):
        evaluate_features(q, g, **{**ids, "q_pids": ids["q_pids"][:-1]})
    with pytest.raises(ReidError, match=r"g_feats as an N x D matrix, got shape \(70,\)"):
        evaluate_features(q, g[:, 0], **ids)
