"""CMC protocols: CUHK03 single-gallery-shot against a loop reference with the same seeds."""
import numpy as np
import pytest

from reid.errors import ReidError
from reid.evaluation.protocols import PROTOCOLS
from reid.evaluation.rank import evaluate_rank
from test_evaluation_rank import draw, random_problem


def brute_force_cuhk03(dist, q_pids, g_pids, q_cams, g_cams, max_rank, repeats=10, seed=0):
    """Per query and repeat: one kept gallery item per identity (smallest priority), ranked."""
    num_g = dist.shape[1]
    priority = np.random.default_rng(seed).random((repeats, num_g))
    length = min(max_rank, len(set(g_pids.tolist())))
    cmc_sum, num_valid = [0.0] * length, 0
    for q in range(dist.shape[0]):
        kept = [g for g in range(num_g)
                if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        if not any(g_pids[g] == q_pids[q] for g in kept):
            continue
        num_valid += 1
        for t in range(repeats):
            chosen = {}
            for g in kept:
                pid = g_pids[g]
                if pid not in chosen or priority[t][g] < priority[t][chosen[pid]]:
                    chosen[pid] = g
            ranked = sorted(chosen.values(), key=lambda g: (dist[q, g], g))
            rank = 1 + ranked.index(chosen[q_pids[q]])
            for k in range(length):
                cmc_sum[k] += (1.0 if rank <= k + 1 else 0.0) / repeats
    return np.array(cmc_sum) / num_valid


@pytest.mark.parametrize("seed", range(12))
def test_cuhk03_matches_the_loop_reference(seed):
    problem, max_rank = draw(seed)
    expected = brute_force_cuhk03(*problem, max_rank)
    cmc, all_ap, all_inp = evaluate_rank(*problem, max_rank=max_rank, protocol="cuhk03")
    np.testing.assert_allclose(cmc, expected, rtol=0, atol=1e-6)
    # AP and INP are computed over the full kept list, as under the Market protocol.
    _, market_ap, market_inp = evaluate_rank(*problem, max_rank=max_rank, protocol="market")
    np.testing.assert_array_equal(all_ap, market_ap)
    np.testing.assert_array_equal(all_inp, market_inp)


def test_cuhk03_cmc_differs_from_market_and_is_capped_by_identities():
    # Many images per identity: single-shot CMC is not the Market one, and it has one entry
    # per gallery identity at most.
    rng = np.random.default_rng(4)
    problem = random_problem(rng, 20, 90, 6, 3, "continuous")
    market, _, _ = evaluate_rank(*problem, protocol="market")
    cuhk03, _, _ = evaluate_rank(*problem, protocol="cuhk03")
    assert len(market) == 50 and len(cuhk03) == 6
    assert not np.allclose(market[:6], cuhk03)


def test_cuhk03_is_deterministic():
    problem, _ = draw(3)
    first, _, _ = evaluate_rank(*problem, protocol="cuhk03")
    second, _, _ = evaluate_rank(*problem, protocol="cuhk03")
    np.testing.assert_array_equal(first, second)


def test_hand_computed_single_shot():
    # One query (pid 1, camera 0); gallery: pid 1 at cameras 1 and 2 (distances 0.5 and 0.1),
    # pid 2 (0.3), pid 3 (0.2). Each repeat picks one of the two positives:
    # 0.1 -> rank 1; 0.5 -> rank 3 (after 0.2 and 0.3).
    dist = np.array([[0.5, 0.1, 0.3, 0.2]])
    g_pids, g_cams = np.array([1, 1, 2, 3]), np.array([1, 2, 0, 0])
    priority = np.random.default_rng(0).random((10, 4))
    picks_near = np.mean(priority[:, 1] < priority[:, 0])
    cmc, _, _ = evaluate_rank(dist, [1], g_pids, [0], g_cams, protocol="cuhk03")
    np.testing.assert_allclose(cmc, [picks_near, picks_near, 1.0])
    assert 0 < picks_near < 1  # both positives are drawn in some repeat


def test_registry_lists_the_protocols():
    assert PROTOCOLS.names() == ["cuhk03", "market"]


def test_unknown_protocol_names_the_closest():
    problem, _ = draw(0)
    with pytest.raises(ReidError, match=r"unknown evaluation protocol 'cuhk3'; did you mean "
                                        r"'cuhk03'\?"):
        evaluate_rank(*problem, protocol="cuhk3")
