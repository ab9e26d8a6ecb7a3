"""Average query expansion against a brute-force loop and hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.errors import ReidError
from reid.evaluation.query_expansion import average_query_expansion


def brute_force_aqe(q, g, alpha, qe_time, qe_k):
    """FastReID's TEST.AQE from its definition, one item at a time, in float64."""
    feats = np.concatenate([q, g]).astype(np.float64)
    for _ in range(qe_time):
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        expanded = np.empty_like(feats)
        for i in range(len(feats)):
            sims = np.array([unit[i] @ unit[j] for j in range(len(feats))])
            order = np.argsort(-sims, kind="stable")
            top = order[:qe_k]
            if qe_k < len(feats):  # the comparison assumes no near-tie at the cut
                assert sims[order[qe_k - 1]] - sims[order[qe_k]] > 1e-5
            expanded[i] = sum(sims[j] ** alpha * feats[j] for j in top) / qe_k
        feats = expanded
    return feats[:len(q)], feats[len(q):]


def problem(seed, num_q=9, num_g=23, dim=6, noise=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, dim))
    x = centres[rng.integers(0, 5, num_q + num_g)]
    x += noise * rng.standard_normal(x.shape)
    x *= rng.uniform(0.5, 3.0, size=(len(x), 1))  # un-normalised, as model features are
    return x[:num_q].astype(np.float32), x[num_q:].astype(np.float32)


@pytest.mark.parametrize("alpha,qe_time,qe_k,noise", [
    (3.0, 1, 5, 0.5), (3.0, 2, 5, 0.5), (1.0, 1, 3, 0.5), (2.0, 3, 4, 2.0), (3.0, 1, 32, 0.5),
])
def test_matches_brute_force(alpha, qe_time, qe_k, noise):
    # Several rounds pull a cluster's features together until their similarities tie;
    # the 3-round case uses noisier data so that its neighbour lists stay well separated.
    q, g = problem(qe_k + qe_time, noise=noise)
    expected_q, expected_g = brute_force_aqe(q, g, alpha, qe_time, qe_k)
    got_q, got_g = average_query_expansion(q, g, alpha=alpha, qe_time=qe_time, qe_k=qe_k)
    assert got_q.dtype == np.float32 and got_q.shape == q.shape and got_g.shape == g.shape
    np.testing.assert_allclose(got_q, expected_q, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_g, expected_g, rtol=1e-5, atol=1e-5)


def test_hand_computed_example():
    # Unit vectors at 0, 60 and 180 degrees; qe_k = 2, alpha = 1.
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0.5, np.sqrt(3) / 2], [-2.0, 0.0]], dtype=np.float32)
    got_q, got_g = average_query_expansion(q, g, alpha=1.0, qe_time=1, qe_k=2)
    # Query: itself (sim 1) and the 60-degree item (sim 0.5): (q + 0.5 * g0) / 2.
    np.testing.assert_allclose(got_q[0], [(1 + 0.25) / 2, 0.5 * np.sqrt(3) / 2 / 2], atol=1e-6)
    # Gallery 0: itself and the query (sim 0.5); gallery 1 (length 2): itself and g0 (sim -0.5).
    np.testing.assert_allclose(got_g[0], [(0.5 + 0.5) / 2, np.sqrt(3) / 2 / 2], atol=1e-6)
    np.testing.assert_allclose(got_g[1], [(-2.0 - 0.5 * 0.5) / 2, -0.5 * np.sqrt(3) / 2 / 2],
                               atol=1e-6)


def test_qe_time_zero_and_qe_k_one_leave_features_unchanged():
    q, g = problem(1)
    for kwargs in (dict(qe_time=0), dict(qe_k=1)):
        got_q, got_g = average_query_expansion(torch.from_numpy(q), g, **kwargs)
        np.testing.assert_allclose(got_q, q, rtol=1e-6)
        np.testing.assert_allclose(got_g, g, rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(qe_k=0), "1 <= qe_k <= number of items = 32"),
    (dict(qe_k=33), "1 <= qe_k <= number of items = 32"),
    (dict(qe_time=-1), "integer qe_time >= 0"),
    (dict(alpha=float("nan")), "finite alpha"),
])
def test_bad_parameters_raise(kwargs, message):
    q, g = problem(2)
    with pytest.raises(ReidError, match=message):
        average_query_expansion(q, g, **kwargs)


def test_bad_features_raise():
    q, g = problem(3)
    with pytest.raises(ReidError, match="same dimension"):
        average_query_expansion(q, g[:, :4])
    with pytest.raises(ReidError, match="q_feats as a non-empty N x D matrix"):
        average_query_expansion(q[0], g)
