"""The bfloat16 brute-force candidate search (reid.retrieval.bf16_scan) against brute force
in numpy (float64, oracles.reid_distances): the same nearest rows and their exact distances,
whatever the chunking, from memory or a memory-mapped .npy, and float32 where bf16 is not
native."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from reid.errors import ReidError
from reid.evaluation import extract
from reid.evaluation.features import evaluate_features
from reid.retrieval import bf16_scan, sources
from reid.retrieval.bf16_scan import bf16_top_k

from oracles import reid_distances


def brute_force(queries: np.ndarray, gallery: np.ndarray, k: int, metric: str):
    distances = reid_distances(queries, gallery, metric)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, 1)


@pytest.fixture(scope="module")
def features():
    """People (clusters) with a few images each: neighbours that are near, not ties."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(120, 32))
    gallery = centres[rng.integers(0, 120, 3000)] + 0.6 * rng.normal(size=(3000, 32))
    queries = centres[rng.integers(0, 120, 70)] + 0.6 * rng.normal(size=(70, 32))
    return queries.astype(np.float32), gallery.astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_rows_and_distances_equal_brute_force(features, metric):
    queries, gallery = features
    ids, distances = bf16_top_k(queries, gallery, 15, metric)
    expected_ids, expected = brute_force(queries, gallery, 15, metric)
    # bfloat16 chooses the 30 candidates; float32 re-scoring orders them: same rows
    assert np.mean(ids == expected_ids) > 0.99
    assert all(len(np.intersect1d(a, b)) >= 14 for a, b in zip(ids, expected_ids))
    exact_of_found = np.take_along_axis(reid_distances(queries, gallery, metric), ids, 1)
    np.testing.assert_allclose(distances, exact_of_found, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_chunks_and_a_memory_mapped_gallery_change_nothing(features, tmp_path, monkeypatch):
    queries, gallery = features
    whole = bf16_top_k(queries, gallery, 10)
    path = tmp_path / "gallery.npy"
    np.save(path, gallery)
    monkeypatch.setattr(bf16_scan, "GALLERY_ROWS", 700)   # 5 chunks, the last of 200 rows
    monkeypatch.setattr(bf16_scan, "CAST_ROWS", 300)      # cast in 300 + 300 + 100 rows
    monkeypatch.setattr(bf16_scan, "QUERY_ROWS", 16)
    monkeypatch.setattr(sources, "GATHER_BYTES", 9 * 20 * 32 * 4)  # 9 queries' 20 rows
    chunked = bf16_top_k(queries, np.load(path, mmap_mode="r"), 10)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-6)


@pytest.mark.parametrize("gallery_rows", [700, 4096])  # chunks of 700 padded / 1,024 multiples
def test_padding_rows_are_never_returned(monkeypatch, gallery_rows):
    """Every gallery row scores below 0 against every query, the padding's zero rows 0: a
    padded row read as a candidate would win (and carry an id past the gallery)."""
    monkeypatch.setattr(bf16_scan, "GALLERY_ROWS", gallery_rows)
    rng = np.random.default_rng(8)
    axis = np.eye(16, dtype=np.float32)[0] * 4
    queries = (axis + 0.5 * rng.normal(size=(9, 16))).astype(np.float32)
    gallery = (-axis + 0.5 * rng.normal(size=(2500, 16))).astype(np.float32)
    assert (reid_distances(queries, gallery, "cosine") > 1).all()  # cosines all negative
    ids, distances = bf16_top_k(queries, gallery, 12, rescore=3)
    expected_ids, expected = brute_force(queries, gallery, 12, "cosine")
    assert ids.max() < len(gallery)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected, rtol=1e-5)


def test_k_above_the_gallery_returns_every_row(features):
    queries, gallery = features
    ids, _ = bf16_top_k(queries[:3], gallery[:40], 100)
    assert ids.shape == (3, 40)
    assert all(sorted(row) == list(range(40)) for row in ids)


def test_float32_where_bfloat16_is_not_native(features, monkeypatch, caplog):
    queries, gallery = features
    monkeypatch.setattr(extract, "native_bf16", lambda device: False)
    monkeypatch.setattr(extract, "_WARNED_NO_BF16", set())
    with caplog.at_level(logging.WARNING):
        ids, _ = bf16_top_k(queries, gallery, 15, rescore=1)
    expected, _ = brute_force(queries, gallery, 15, "cosine")
    np.testing.assert_array_equal(ids, expected)  # float32 selection: exact, no re-scoring
    assert "TEST.INDEX.TYPE bf16 is ignored on this CPU" in caplog.text


def test_evaluation_refuses_search_parameters(features):
    queries, gallery = features
    pids = np.arange(len(gallery)) % 7
    with pytest.raises(ReidError, match="index type 'bf16' takes no search parameters, "
                                        "got 'nprobe=4'"):
        evaluate_features(queries, gallery, np.arange(len(queries)) % 7, pids,
                          np.zeros(len(queries)), np.ones(len(gallery)), index="bf16",
                          index_params="nprobe=4")


def test_an_unknown_metric_is_one_line(features):
    queries, gallery = features
    with pytest.raises(ReidError, match="bf16_top_k: unknown metric 'jaccard': expected one of "
                                        "cosine, euclidean"):
        bf16_top_k(queries, gallery, 5, "jaccard")


def test_euclidean_evaluation_with_every_row_a_candidate_is_exact(features):
    queries, gallery = features
    rng = np.random.default_rng(5)
    q_pids, g_pids = rng.integers(0, 12, len(queries)), rng.integers(0, 12, len(gallery))
    q_cams, g_cams = rng.integers(0, 3, len(queries)), rng.integers(0, 3, len(gallery))
    args = (queries, gallery, q_pids, g_pids, q_cams, g_cams)
    exact = evaluate_features(*args, metric="euclidean", device="cpu")
    approx = evaluate_features(*args, metric="euclidean", device="cpu", index="bf16",
                               candidates=len(gallery))
    np.testing.assert_allclose(approx.all_ap, exact.all_ap, rtol=1e-6)
    np.testing.assert_allclose(approx.cmc, exact.cmc, atol=1e-12)


def merged(tiles, k):
    """merge_tile over ``tiles`` (column ids continuing from tile to tile)."""
    rows = tiles[0].shape[0]
    scores = torch.full((rows, k), -math.inf)
    ids = torch.full((rows, k), -1, dtype=torch.int64)
    first = 0
    for tile in tiles:
        scores, ids = bf16_scan.merge_tile(scores, ids, tile, first)
        first += tile.shape[1]
    return scores, ids


def assert_k_best(tiles, scores, ids, k):
    """Against sorting every score: the same k values per row, each id holding its value,
    no id twice."""
    whole = torch.cat([tile.float() for tile in tiles], 1)
    assert torch.equal(scores, whole.sort(dim=1, descending=True).values[:, :k])
    assert torch.equal(whole.gather(1, ids), scores)
    assert all(len(set(row.tolist())) == k for row in ids)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shift", [-5.0, 0.0, 3.0])  # all negative, mixed, all positive
def test_merge_tile_keeps_the_k_best_scores_of_every_tile(dtype, shift):
    generator = torch.Generator().manual_seed(0)
    # lanes of 32 with a tail of 24 columns; lanes of 2; too narrow for lanes (30 < 2 k)
    tiles = [(torch.randn(37, cols, generator=generator) + shift).to(dtype)
             for cols in (3000, 2500, 1234, 50, 30)]
    scores, ids = merged(tiles, 20)
    assert_k_best(tiles, scores, ids, 20)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_score_equal_to_the_threshold_is_kept(dtype):
    """The 4 best scores each top one of the 4 lanes (column c is in lane c mod 4): the
    threshold is the 4th best itself, which must survive."""
    tile = (1 + (128 - torch.arange(128.0)) / 128)[None, :].to(dtype)
    scores, ids = merged([tile], 4)
    assert ids.tolist() == [[0, 1, 2, 3]]
    assert_k_best([tile], scores, ids, 4)


def test_rows_of_equal_scores_keep_k_distinct_ids(monkeypatch):
    calls = []
    read_whole = bf16_scan._with_rows_of_ties
    monkeypatch.setattr(bf16_scan, "_with_rows_of_ties",
                        lambda *args: calls.append(args[1].tolist()) or read_whole(*args))
    generator = torch.Generator().manual_seed(1)
    tiles = [torch.randn(6, 4000, generator=generator).bfloat16() for _ in range(2)]
    for tile in tiles:
        tile[2] = 0.0    # a zero query: every score ties
        tile[3] = 0.75   # ties above the other rows' scores
        tile[4, ::3] = -1.5
    scores, ids = merged(tiles, 25)
    assert_k_best(tiles, scores, ids, 25)
    assert calls and all(2 in rows and 3 in rows for rows in calls)  # read by topk
