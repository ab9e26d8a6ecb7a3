"""evaluate_rank / summarize against a brute-force reference written from the definitions.

The reference ranks each query's gallery with Python's stable ``sorted`` on (distance, index)
and loops; the implementation never sorts a row (it counts, per positive, the kept items
before it), so agreement on many random problems with heavy ties is the real check.
"""
import numpy as np
import pytest

from reid.errors import ReidError
from reid.evaluation import positive_ranks, streaming
from reid.evaluation.rank import evaluate_rank, summarize
from reid.evaluation.streaming import StreamingEvaluation


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


def distances(rng, kind, shape):
    """Distance matrices that stress the tie rule and the exact-comparison path."""
    if kind == "levels":      # integer levels: many exact ties between positives and others
        return rng.integers(0, rng.integers(1, 8), size=shape).astype(np.float32)
    if kind == "clustered":   # distinct values closer than any cell width: compared exactly
        return (1.0 + 1e-6 * rng.integers(0, 40, size=shape)).astype(np.float64)
    if kind == "signed":      # negative values and both zeros (-0.0 == 0.0: ties by index)
        values = rng.choice(np.array([-1.0, -0.5, -0.0, 0.0, 0.25, 3.0], np.float32), size=shape)
        return values * rng.choice(np.array([1.0, 1.0, 1.0001], np.float32), size=shape)
    return rng.random(shape, dtype=np.float32)  # "continuous"


def random_problem(rng, num_q, num_g, num_pids, num_cams, kind, distractors=0,
                   single_camera_gallery=False):
    distmat = distances(rng, kind, (num_q, num_g))
    q_pids = rng.integers(0, num_pids, size=num_q)
    g_pids = rng.integers(0, num_pids + distractors, size=num_g)  # pids >= num_pids: distractors
    q_cams = rng.integers(0, num_cams, size=num_q)
    g_cams = rng.integers(0, num_cams, size=num_g)
    if single_camera_gallery:  # only queries seen by another camera can match
        g_cams[:] = 0
    return distmat, q_pids, g_pids, q_cams, g_cams


def draw(seed):
    """A random problem of one of the distance kinds, with at least one valid query."""
    rng = np.random.default_rng(seed)
    kind = ["levels", "clustered", "signed", "continuous"][seed % 4]
    problem = random_problem(rng, num_q=int(rng.integers(1, 25)), num_g=int(rng.integers(1, 160)),
                             num_pids=int(rng.integers(1, 12)), num_cams=int(rng.integers(2, 6)),
                             kind=kind, distractors=int(rng.integers(0, 6)),
                             single_camera_gallery=seed % 5 == 0)
    _, q_pids, g_pids, q_cams, g_cams = problem
    g_pids[0], q_cams[0], g_cams[0] = q_pids[0], 1, 0  # query 0 has a true match
    return problem, int(rng.integers(1, 60))


def assert_matches_brute_force(problem, max_rank=50, **kwargs):
    ref_cmc, ref_ap, ref_inp = brute_force_rank(*problem, max_rank)
    cmc, all_ap, all_inp = evaluate_rank(*problem, max_rank=max_rank, **kwargs)
    assert len(cmc) == min(max_rank, problem[0].shape[1])
    assert len(all_ap) == len(ref_ap) == len(all_inp)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(all_ap, ref_ap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(all_inp, ref_inp, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(60))
def test_random_problems_match_brute_force(seed):
    problem, max_rank = draw(seed)
    assert_matches_brute_force(problem, max_rank=max_rank)


@pytest.mark.parametrize("kind", ["levels", "continuous", "clustered"])
def test_wide_gallery_uses_many_cells_and_still_matches(kind):
    # 3000 columns: up to 3000 candidates per row (items not after its last positive), hence
    # up to 2048 cells per row; several rows per chunk.
    rng = np.random.default_rng(11)
    problem = random_problem(rng, 12, 3000, 40, 4, kind)
    assert positive_ranks._cells_per_row(12 * 3000, 12) == 2048
    assert_matches_brute_force(problem)


@pytest.mark.parametrize("kind", ["levels", "continuous", "signed"])
def test_few_cells_leave_many_items_to_the_exact_comparison(monkeypatch, kind):
    # 64 cells for up to 3000 candidates per row: most candidates share a positive's cell and
    # are ranked by the exact (distance, gallery index) comparison.
    monkeypatch.setattr(positive_ranks, "_cells_per_row", lambda candidates, rows: 64)
    rng = np.random.default_rng(12)
    assert_matches_brute_force(random_problem(rng, 10, 3000, 30, 3, kind, distractors=5))


def test_random_draws_cover_the_edge_cases():
    # Guard that the random problems above really contain skipped queries, junk, distractors,
    # single-camera galleries and exact ties between a positive and a kept item.
    seen = {"skipped": False, "junk": False, "tie": False, "single camera": False,
            "distractor": False}
    for seed in range(60):
        (dist, q_pids, g_pids, q_cams, g_cams), _ = draw(seed)
        same = q_pids[:, None] == g_pids[None, :]
        junk = same & (q_cams[:, None] == g_cams[None, :])
        positive = same & ~junk
        seen["skipped"] |= bool((~positive.any(axis=1)).any())
        seen["junk"] |= bool(junk.any())
        seen["single camera"] |= len(set(g_cams.tolist())) == 1 and bool(junk.any())
        seen["distractor"] |= not set(g_pids.tolist()) <= set(q_pids.tolist())
        for q in range(len(dist)):
            kept_values = set(dist[q][~same[q]].tolist())
            seen["tie"] |= any(v in kept_values for v in dist[q][positive[q]].tolist())
    assert all(seen.values()), seen


def test_chunking_and_threads_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(5)
    problem = random_problem(rng, 33, 50, 10, 3, "levels")
    results = []
    for cells, workers in [(10_000, 1), (1, 1), (1, 3), (150, 2)]:
        # 1 cell: one query row per chunk; 150: three rows per chunk.
        monkeypatch.setattr(streaming, "CHUNK_CELLS", cells)
        with StreamingEvaluation(*problem[1:], workers=workers) as evaluation:
            evaluation.add(0, problem[0][:20])
            evaluation.add(20, problem[0][20:])
            results.append(evaluation.result())
    assert_matches_brute_force(problem)
    for result in results[1:]:  # bit for bit, in float64
        np.testing.assert_array_equal(result.cmc, results[0].cmc)
        np.testing.assert_array_equal(result.all_ap, results[0].all_ap)
        np.testing.assert_array_equal(result.all_inp, results[0].all_inp)


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


def test_negative_zero_ties_with_zero():
    # -0.0 == 0.0, so the tie is broken by index: the impostor (index 0) comes first.
    cmc, all_ap, _ = evaluate_rank(np.array([[0.0, -0.0]], np.float32), [1], [5, 1], [0], [1, 1])
    np.testing.assert_allclose(cmc, [0.0, 1.0])
    np.testing.assert_allclose(all_ap, [0.5])


def test_nan_and_inf_impostors_rank_last():
    # NaN ranks like +inf (after every finite distance, ties by index), as a sort puts it last.
    rng = np.random.default_rng(3)
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(rng, 15, 60, 5, 3, "continuous")
    impostor = q_pids[:, None] != g_pids[None, :]
    special = impostor & (rng.random(dist.shape) < 0.3)
    dist[special] = np.where(rng.random(special.sum()) < 0.5, np.nan, np.inf)
    expected = brute_force_rank(np.where(np.isnan(dist), np.inf, dist), q_pids, g_pids,
                                q_cams, g_cams, 50)
    got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_non_finite_junk_and_huge_impostors_need_no_special_case():
    # Junk (same pid, same camera) may be NaN or infinite; impostors may be huge or -inf.
    rng = np.random.default_rng(4)
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(rng, 15, 80, 5, 3, "continuous")
    dist = dist.astype(np.float32)
    junk = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])
    dist[junk] = np.where(rng.random(junk.sum()) < 0.5, np.nan, -np.inf)
    impostor = q_pids[:, None] != g_pids[None, :]
    huge = impostor & (rng.random(dist.shape) < 0.2)
    dist[huge] = rng.choice(np.array([-3e38, -np.inf, 3e38], np.float32), size=huge.sum())
    expected = brute_force_rank(np.where(np.isnan(dist), np.inf, dist), q_pids, g_pids,
                                q_cams, g_cams, 50)
    # One worker: numpy's error state does not reach a thread pool's threads.
    with np.errstate(all="raise"), StreamingEvaluation(q_pids, g_pids, q_cams, g_cams,
                                                       workers=1) as evaluation:
        evaluation.add(0, dist)  # no overflow or invalid-cast warning on the way
        result = evaluation.result()
    for got, want in zip((result.cmc, result.all_ap, result.all_inp), expected):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_non_finite_distance_to_a_true_match_is_an_error():
    dist = np.array([[0.1, 0.2], [np.nan, 0.3]])
    with pytest.raises(ReidError, match="query 1 has a non-finite distance to one of its true"):
        evaluate_rank(dist, [1, 1], [1, 2], [0, 0], [1, 1])


def test_no_valid_query_is_an_error():
    # The only same-pid gallery item shares the query's camera: junk, so nothing is valid.
    with pytest.raises(ReidError, match="no query has a valid gallery match"):
        evaluate_rank(np.array([[0.3, 0.1]]), [1], [1, 2], [0], [0, 1])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ReidError, match="g_pids has 3 entries"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2, 3], [0], [0, 1])
    with pytest.raises(ReidError, match="2-D query x gallery distance matrix"):
        evaluate_rank(np.zeros(3), [1], [1, 2, 3], [0], [0, 1, 1])


def test_rows_must_arrive_in_order():
    problem = random_problem(np.random.default_rng(0), 4, 6, 2, 2, "levels")
    evaluation = StreamingEvaluation(*problem[1:], workers=1)
    with pytest.raises(ReidError, match="expected row 0, got rows 2..4 of 4"):
        evaluation.add(2, problem[0][2:])
    evaluation.add(0, problem[0][:2])
    with pytest.raises(ReidError, match="evaluation got 2 of 4 query rows"):
        evaluation.result()


def test_summarize_reads_rank_k_and_means():
    cmc = np.linspace(0.1, 1.0, 20)
    results = summarize(cmc, np.array([0.2, 0.4]), np.array([0.1, 0.3]))
    assert results["Rank-1"] == pytest.approx(10.0)
    assert results["Rank-5"] == pytest.approx(100 * cmc[4])
    assert results["Rank-10"] == pytest.approx(100 * cmc[9])
    assert results["mAP"] == pytest.approx(30.0)
    assert results["mINP"] == pytest.approx(20.0)
