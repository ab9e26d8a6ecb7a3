"""evaluate_rank / summarize against a brute-force reference written from the definitions."""
import numpy as np
import pytest

from reid.errors import ReidError
from reid.evaluation import rank as rank_module
from reid.evaluation.rank import evaluate_rank, summarize


def brute_force_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """One query at a time, with plain loops over a stably sorted gallery list."""
    num_g = distmat.shape[1]
    cmc_rows, aps, inps = [], [], []
    for q in range(distmat.shape[0]):
        # Sort gallery indices by (distance, index): ties resolved by gallery index.
        ranked = sorted(range(num_g), key=lambda g: (distmat[q, g], g))
        kept = [g for g in ranked
                if not (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q])]
        hits = [1 if g_pids[g] == q_pids[q] else 0 for g in kept]
        if sum(hits) == 0:
            continue
        precisions, found = [], 0
        for position, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / position)
        aps.append(sum(precisions) / len(precisions))
        last = max(i for i, hit in enumerate(hits, start=1) if hit)
        inps.append(sum(hits) / last)
        first = min(i for i, hit in enumerate(hits, start=1) if hit)
        cmc_rows.append([1.0 if first <= k else 0.0 for k in range(1, min(max_rank, num_g) + 1)])
    cmc = [sum(col) / len(cmc_rows) for col in zip(*cmc_rows)]
    return np.array(cmc), np.array(aps), np.array(inps)


def random_problem(rng, num_q, num_g, num_pids, num_cams, num_levels):
    # Integer-valued distances: many exact ties, so the tie rule matters.
    distmat = rng.integers(0, num_levels, size=(num_q, num_g)).astype(np.float32)
    q_pids = rng.integers(0, num_pids, size=num_q)
    g_pids = rng.integers(0, num_pids, size=num_g)
    q_cams = rng.integers(0, num_cams, size=num_q)
    g_cams = rng.integers(0, num_cams, size=num_g)
    return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed,num_q,num_g,num_pids,num_cams,num_levels,max_rank", [
    (0, 40, 120, 15, 3, 6, 50),     # many ties, junk and skipped queries
    (1, 30, 20, 8, 2, 4, 50),       # G < max_rank: CMC has G entries
    (2, 25, 80, 30, 2, 1000, 10),   # few ties, many queries without a match
    (3, 60, 60, 5, 6, 3, 100),      # heavy ties and many positives per query
    (4, 10, 7, 3, 1, 2, 50),        # a single camera: every same-pid item is junk
])
def test_matches_brute_force(seed, num_q, num_g, num_pids, num_cams, num_levels, max_rank):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, num_q, num_g, num_pids, num_cams, num_levels)
    if num_cams == 1:
        # Give query 0 one positive on another camera so at least one query is valid.
        problem[2][0], problem[4][0] = problem[1][0], 1
    ref_cmc, ref_ap, ref_inp = brute_force_rank(*problem, max_rank)
    cmc, all_ap, all_inp = evaluate_rank(*problem, max_rank=max_rank)

    assert len(cmc) == min(max_rank, num_g)
    assert len(all_ap) == len(ref_ap) == len(all_inp)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(all_ap, ref_ap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(all_inp, ref_inp, rtol=0, atol=1e-6)


def test_some_queries_are_skipped_in_random_problem():
    # Guard that the brute-force comparison above really exercises skipped queries and junk.
    rng = np.random.default_rng(2)
    problem = random_problem(rng, 25, 80, 30, 2, 1000)
    _, all_ap, _ = evaluate_rank(*problem)
    assert 0 < len(all_ap) < 25


def test_row_blocks_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(5)
    problem = random_problem(rng, 33, 50, 10, 3, 5)
    whole = evaluate_rank(*problem)
    # 50 cells per block = one query row at a time.
    monkeypatch.setattr(rank_module, "_BLOCK_CELLS", 50)
    blocked = evaluate_rank(*problem)
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a, b)


def test_hand_computed_example():
    # Query 0: pid 1, camera 0.  Query 1: pid 2, camera 1.  Query 2: pid 9 (absent) -> skipped.
    distmat = np.array([
        [0.1, 0.2, 0.3, 0.4, 0.5],
        [0.5, 0.1, 0.2, 0.2, 0.3],
        [0.1, 0.2, 0.3, 0.4, 0.5],
    ])
    g_pids = np.array([1, 2, 1, 1, 2])
    g_cams = np.array([0, 0, 1, 2, 1])
    q_pids, q_cams = np.array([1, 2, 9]), np.array([0, 1, 0])
    cmc, all_ap, all_inp = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    # Query 0: g0 is junk (same pid, same camera). Kept list g1(-) g2(+) g3(+) g4(-):
    #   AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3, first hit at rank 2.
    # Query 1: sorted g1 g2 g3 g4 g0 (g2, g3 tie at 0.2 -> index order); g4 is junk
    #   (pid 2, camera 1). Kept g1(+) g2(-) g3(-) g0(-): AP = 1, INP = 1/1, first hit rank 1.
    np.testing.assert_allclose(all_ap, [7 / 12, 1.0], atol=1e-6)
    np.testing.assert_allclose(all_inp, [2 / 3, 1.0], atol=1e-6)
    np.testing.assert_allclose(cmc, [0.5, 1.0, 1.0, 1.0, 1.0], atol=1e-6)

    results = summarize(cmc, all_ap, all_inp)
    assert set(results) == {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}
    assert results["Rank-1"] == pytest.approx(50.0)
    assert results["Rank-5"] == pytest.approx(100.0)
    # Gallery of 5: Rank-10 is the last CMC value.
    assert results["Rank-10"] == pytest.approx(100.0)
    assert results["mAP"] == pytest.approx(100 * (7 / 12 + 1) / 2, abs=1e-4)
    assert results["mINP"] == pytest.approx(100 * (2 / 3 + 1) / 2, abs=1e-4)
    assert all(isinstance(v, float) for v in results.values())


def test_ties_are_broken_by_gallery_index():
    # Two gallery items at the same distance; the positive has the higher index, so it ranks 2nd.
    cmc, all_ap, _ = evaluate_rank(np.zeros((1, 2)), [1], [5, 1], [0], [1, 1])
    np.testing.assert_allclose(cmc, [0.0, 1.0])
    np.testing.assert_allclose(all_ap, [0.5])
    # Swap the indices: now the positive ranks first.
    cmc, all_ap, _ = evaluate_rank(np.zeros((1, 2)), [1], [1, 5], [0], [1, 1])
    np.testing.assert_allclose(cmc, [1.0, 1.0])
    np.testing.assert_allclose(all_ap, [1.0])


def test_no_valid_query_is_an_error():
    # The only same-pid gallery item shares the query's camera: junk, so nothing is valid.
    with pytest.raises(ReidError, match="no query has a valid gallery match"):
        evaluate_rank(np.array([[0.3, 0.1]]), [1], [1, 2], [0], [0, 1])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ReidError, match="g_pids has 3 entries"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2, 3], [0], [0, 1])


def test_summarize_reads_rank_k_and_means():
    cmc = np.linspace(0.1, 1.0, 20)
    results = summarize(cmc, np.array([0.2, 0.4]), np.array([0.1, 0.3]))
    assert results["Rank-1"] == pytest.approx(10.0)
    assert results["Rank-5"] == pytest.approx(100 * cmc[4])
    assert results["Rank-10"] == pytest.approx(100 * cmc[9])
    assert results["mAP"] == pytest.approx(30.0)
    assert results["mINP"] == pytest.approx(20.0)
