"""reid.retrieval.recall: the exact top-k reference (ExactTopK, fed chunk by chunk) against
a numpy brute force (oracles.reid_distances), and recall@k by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation.distance import DISTANCE_METRICS
from reid.retrieval import recall
from reid.retrieval.recall import ExactTopK, exact_top_k, recall_at
from reid.retrieval.sources import from_arrays

from oracles import reid_distances


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    return (rng.normal(size=(23, 12)).astype(np.float32),
            rng.normal(size=(1000, 12)).astype(np.float32))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunked_top_k_equals_brute_force(data, metric, monkeypatch):
    queries, gallery = data
    monkeypatch.setattr(recall, "CHUNK_ROWS", 170)  # 6 chunks, the last of 150 rows
    ids, distances = exact_top_k(queries, from_arrays(gallery), 40, metric)
    reference = reid_distances(queries, gallery, metric)
    expected = np.argsort(reference, axis=1, kind="stable")[:, :40]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(reference, expected, 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_terms_handed_in_give_the_same_answer(data, metric):
    queries, gallery = data
    own, given = ExactTopK(queries, 15, metric), ExactTopK(queries, 15, metric)
    distance = DISTANCE_METRICS.get(metric)
    for start in range(0, len(gallery), 300):
        chunk = gallery[start:start + 300]
        own.add(start, chunk)
        given.add(start, chunk, distance.gallery_terms(torch.from_numpy(chunk)))
    np.testing.assert_array_equal(own.result()[0], given.result()[0])
    np.testing.assert_array_equal(own.result()[1], given.result()[1])


def test_k_above_the_rows_seen_returns_what_was_seen(data):
    queries, gallery = data
    reference = ExactTopK(queries[:2], 50)
    reference.add(0, gallery[:30])
    ids, distances = reference.result()
    assert ids.shape == distances.shape == (2, 30)
    assert all(sorted(row) == list(range(30)) for row in ids)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_recall_at_by_hand():
    found = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[3, 2, 9], [7, 8, 9]])
    assert recall_at(found, exact, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at(found, exact, 1) == 0.0
