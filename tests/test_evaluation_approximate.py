"""Approximate evaluation (metrics from each query's top-K of a faiss index): equal to the
exact engine when every item is a candidate, lower bounds otherwise, and a hand example."""
from __future__ import annotations

import numpy as np
import pytest

from reid.errors import ReidError
from reid.evaluation.approximate import candidate_metrics
from reid.evaluation.features import evaluate_features
from reid.evaluation.options import RerankOptions


@pytest.fixture(scope="module")
def problem():
    """Clustered features: 40 ids over 4 cameras, plus distractors (pid 0) and junk."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(41, 24))
    g_pids = np.r_[rng.integers(1, 41, 600), np.zeros(300, dtype=int)]
    g_cams = rng.integers(0, 4, len(g_pids))
    q_pids, q_cams = rng.integers(1, 41, 80), rng.integers(0, 4, 80)
    g = centres[g_pids] + 0.9 * rng.normal(size=(len(g_pids), 24))
    q = centres[q_pids] + 0.9 * rng.normal(size=(80, 24))
    return q.astype(np.float32), g.astype(np.float32), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("index", ["Flat", "bf16"])
def test_every_item_a_candidate_gives_the_exact_metrics(problem, index):
    q, g, q_pids, g_pids, q_cams, g_cams = problem
    exact = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, device="cpu")
    approx = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, device="cpu",
                               index=index, candidates=len(g))
    np.testing.assert_allclose(approx.cmc, exact.cmc, atol=1e-12)
    np.testing.assert_allclose(approx.all_ap, exact.all_ap, rtol=1e-6)
    np.testing.assert_allclose(approx.all_inp, exact.all_inp, rtol=1e-6)
    assert approx.candidate_recall == 1.0 and approx.summary()["candidate_recall"] == 100.0


@pytest.mark.parametrize("index", ["Flat", "bf16", "IVF8,Flat", "HNSW16"])
def test_top_k_metrics_are_lower_bounds(problem, index):
    q, g, q_pids, g_pids, q_cams, g_cams = problem
    exact = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, device="cpu")
    approx = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, device="cpu",
                               index=index, candidates=30)
    assert np.all(approx.all_ap <= exact.all_ap + 1e-6)
    assert np.all(approx.all_inp <= exact.all_inp + 1e-6)
    assert np.all(approx.cmc <= exact.cmc + 1e-12)
    if index in ("Flat", "bf16"):  # the true top-30: CMC exact up to rank 30
        np.testing.assert_allclose(approx.cmc[:30], exact.cmc[:30], atol=1e-12)
        # bf16 keeps its own top 30: a row within bfloat16's rounding of the 30th may swap
        assert approx.candidate_recall == 1.0 if index == "Flat" else \
            approx.candidate_recall >= 0.99
    assert 0.0 < approx.candidate_recall <= 1.0 and approx.candidates == 30


def test_hand_computed_example():
    # one query (pid 1, camera 0); gallery: 0 = junk (pid 1, cam 0), 1, 3 = positives
    # (pid 1, cam 1), 2, 4 = others, 5 = a positive never among the candidates.
    g_pids, g_cams = np.array([1, 1, 2, 1, 3, 1]), np.array([0, 1, 1, 2, 0, 1])
    candidates = np.array([[0, 2, 1, 4, 3]])  # kept ranks: 2 -> 1, 1 -> 2, 4 -> 3, 3 -> 4
    result = candidate_metrics(candidates, [1], g_pids, [0], g_cams, max_rank=4)
    # positives at kept ranks 2 and 4 of 3: AP = (1/2 + 2/4) / 3; last positive missing:
    # INP = 3 / (6 - 1 junk)
    assert result.all_ap[0] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert result.all_inp[0] == pytest.approx(3 / 5)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1])


def test_what_approximate_evaluation_cannot_do(problem):
    q, g, q_pids, g_pids, q_cams, g_cams = problem
    with pytest.raises(ReidError, match="cannot do re-ranking, the ROC"):
        evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, index="Flat",
                          rerank=RerankOptions(), roc=True)
    with pytest.raises(ReidError, match="not a faiss factory string"):
        evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, index="IVFnope")


def test_candidate_recall_is_measured_against_brute_force(problem):
    """A lossy index (4-byte codes, 2 of 8 lists probed): the reported recall equals the
    fraction of each query's brute-force top 30 (float64, oracles.reid_distances) that the
    same index's candidates hold (all 80 queries are in the sample of 100)."""
    from reid.evaluation.approximate import RESCORE
    from reid.retrieval import Gallery
    from oracles import reid_distances
    q, g, q_pids, g_pids, q_cams, g_cams = problem
    approx = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, device="cpu",
                               index="IVF8,PQ4", index_params="nprobe=2", candidates=30)
    found = Gallery.build(g, "IVF8,PQ4", "cosine", seed=0, rescore=RESCORE,
                          search_params="nprobe=2").search(q, 30).ids
    truth = np.argsort(reid_distances(q, g, "cosine"), axis=1, kind="stable")[:, :30]
    expected = np.mean([len(np.intersect1d(a, b)) / 30 for a, b in zip(found, truth)])
    assert 0.3 < expected < 0.95  # lossy enough for the check to mean something
    assert approx.candidate_recall == pytest.approx(expected, abs=1e-12)
