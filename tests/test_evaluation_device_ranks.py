"""The GPU ranking path (reid.evaluation.device_ranks), run here on CPU tensors: the torch code
is the same on every device, so it is checked against the brute-force reference and against
the CPU ranking on the same random problems (ties, signed zeros, junk, distractors, queries
without a match)."""
import numpy as np
import pytest
import torch

from reid.errors import ReidError
from reid.evaluation.device_ranks import DeviceRanker
from reid.evaluation.positive_ranks import SamePidIndex, rank_block
from reid.evaluation.streaming import StreamingEvaluation
from test_evaluation_rank import brute_force_rank, draw, random_problem


def evaluate(problem, on_device: bool, block: int = 7, **options):
    dist, q_pids, g_pids, q_cams, g_cams = problem
    with StreamingEvaluation(q_pids, g_pids, q_cams, g_cams, **options) as evaluation:
        for start in range(0, len(dist), block):
            rows = dist[start:start + block]
            evaluation.add(start, rows, torch.from_numpy(rows) if on_device else None)
        return evaluation.result()


@pytest.mark.parametrize("seed", range(40))
def test_device_ranking_matches_brute_force_and_the_cpu_blocks(seed):
    problem, max_rank = draw(seed)
    dist, q_pids, g_pids, q_cams, g_cams = problem
    got = evaluate(problem, on_device=True, max_rank=max_rank)
    cmc, aps, inps = brute_force_rank(*problem, max_rank)
    np.testing.assert_allclose(got.cmc, cmc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.all_ap, aps, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.all_inp, inps, rtol=0, atol=1e-6)

    # Field by field, the same RowBlock as the CPU ranking (padding aside).
    index = SamePidIndex(q_pids, g_pids)
    expected = rank_block(dist, 0, q_pids, q_cams, g_cams, index)
    block = DeviceRanker(q_pids, g_pids, q_cams, g_cams, index, torch.device("cpu")).rank(
        0, torch.from_numpy(dist), dist)
    np.testing.assert_array_equal(block.num_pos, expected.num_pos)
    mask = expected.positive_mask()
    width = expected.ranks.shape[1]
    for name in ("ranks", "pos_index", "pos_dist"):
        np.testing.assert_array_equal(getattr(block, name)[:, :width][mask],
                                      getattr(expected, name)[mask], err_msg=name)
    np.testing.assert_array_equal(block.members, expected.members)


def test_roc_and_the_cuhk03_protocol_read_device_blocks_like_cpu_ones():
    rng = np.random.default_rng(5)
    problem = random_problem(rng, 30, 200, 8, 3, "levels", distractors=4)
    problem[1][0], problem[2][0], problem[3][0], problem[4][0] = 1, 1, 0, 1
    for options in ({"roc": True, "fars": (0.01, 0.1)}, {"protocol": "cuhk03", "max_rank": 5}):
        cpu, gpu = evaluate(problem, False, **options), evaluate(problem, True, **options)
        np.testing.assert_array_equal(gpu.cmc, cpu.cmc)
        np.testing.assert_array_equal(gpu.all_ap, cpu.all_ap)
        if "roc" in options:
            assert gpu.roc.tar_at_far == cpu.roc.tar_at_far


def test_nan_impostors_rank_last_and_a_non_finite_true_match_is_an_error():
    rng = np.random.default_rng(3)
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(rng, 15, 60, 5, 3, "continuous")
    special = (q_pids[:, None] != g_pids[None, :]) & (rng.random(dist.shape) < 0.3)
    dist[special] = np.where(rng.random(special.sum()) < 0.5, np.nan, np.inf)
    problem = (dist, q_pids, g_pids, q_cams, g_cams)
    expected = brute_force_rank(np.where(np.isnan(dist), np.inf, dist), *problem[1:], 50)
    got = evaluate(problem, on_device=True)
    np.testing.assert_allclose(got.all_ap, expected[1], atol=1e-6)
    np.testing.assert_allclose(got.cmc, expected[0], atol=1e-6)

    bad = np.array([[0.1, 0.2], [np.nan, 0.3]], np.float32)
    with pytest.raises(ReidError, match="query 1 has a non-finite distance to one of its true"):
        evaluate((bad, np.array([1, 1]), np.array([1, 2]), np.array([0, 0]), np.array([1, 1])),
                 on_device=True)


def test_ids_torch_cannot_compare_take_the_cpu_path():
    problem, _ = draw(3)
    dist, q_pids, g_pids, q_cams, g_cams = problem
    named = (dist, q_pids.astype(str), g_pids.astype(str), q_cams, g_cams)
    got, expected = evaluate(named, on_device=True), evaluate(problem, on_device=False)
    np.testing.assert_array_equal(got.all_ap, expected.all_ap)


def test_a_gpu_copy_of_another_shape_is_an_error():
    problem, _ = draw(1)
    dist, q_pids, g_pids, q_cams, g_cams = problem
    with StreamingEvaluation(q_pids, g_pids, q_cams, g_cams) as evaluation:
        with pytest.raises(ReidError, match="GPU copy of query rows 0.. has shape"):
            evaluation.add(0, dist, torch.from_numpy(dist[:, :-1].copy()))
