"""TAR@FAR and the ROC curve against a brute force over all query-gallery pairs."""
import sys

import numpy as np
import pytest

from reid.errors import ReidError
from reid.evaluation import roc as roc_module
from reid.evaluation import streaming
from reid.evaluation.roc import far_key, write_roc
from reid.evaluation.streaming import StreamingEvaluation
from test_evaluation_rank import random_problem

FARS = (0.001, 0.01, 0.05, 0.2)


def pair_distances(dist, q_pids, g_pids, q_cams, g_cams):
    """Genuine (same pid, other camera) and impostor (other pid) distances; junk dropped."""
    same = q_pids[:, None] == g_pids[None, :]
    junk = same & (q_cams[:, None] == g_cams[None, :])
    return dist[same & ~junk].astype(np.float64), dist[~same].astype(np.float64)


def brute_force_tar_at_far(genuine, impostor, far):
    """Best TAR over every threshold t (accept d < t) whose FAR does not exceed ``far``."""
    thresholds = np.append(np.unique(np.concatenate([genuine, impostor])), np.inf)
    fars = (impostor[None, :] < thresholds[:, None]).mean(axis=1)
    tars = (genuine[None, :] < thresholds[:, None]).mean(axis=1)
    return tars[fars <= far].max()


def run(problem, fars=FARS, workers=1):
    with StreamingEvaluation(*problem[1:], roc=True, fars=fars, workers=workers) as evaluation:
        evaluation.add(0, problem[0])
        return evaluation.result().roc


@pytest.mark.parametrize("seed,kind", [(0, "continuous"), (1, "levels"), (2, "clustered"),
                                       (3, "signed"), (4, "continuous")])
def test_tar_at_far_matches_brute_force(seed, kind):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, 30, 120, 8, 3, kind, distractors=3)
    genuine, impostor = pair_distances(*problem)
    result = run(problem)
    assert result.num_genuine == genuine.size and result.num_impostors == impostor.size
    for far in FARS:
        assert result.tar_at_far[far] == pytest.approx(
            brute_force_tar_at_far(genuine, impostor, far), abs=1e-12)


def test_curve_points_are_exact_at_their_thresholds():
    rng = np.random.default_rng(7)
    problem = random_problem(rng, 25, 100, 6, 3, "continuous")
    genuine, impostor = pair_distances(*problem)
    curve = run(problem).curve
    assert len(curve.thresholds) > 20
    for t, far, tar in zip(curve.thresholds, curve.far, curve.tar):
        assert far == pytest.approx((impostor < t).mean(), abs=1e-12)
        assert tar == pytest.approx((genuine < t).mean(), abs=1e-12)
    assert np.all(np.diff(curve.far) >= 0) and np.all(np.diff(curve.tar) >= 0)
    assert curve.far[-1] == pytest.approx(1.0) and curve.tar[-1] == pytest.approx(1.0)


def test_pruning_the_kept_impostors_keeps_the_answer_exact(monkeypatch):
    # No slack and one query row per chunk: impostor distances are pruned after most chunks.
    monkeypatch.setattr(roc_module, "COMPACT_SLACK", 0)
    monkeypatch.setattr(streaming, "CHUNK_CELLS", 1)
    rng = np.random.default_rng(9)
    problem = random_problem(rng, 60, 200, 10, 4, "levels")
    genuine, impostor = pair_distances(*problem)
    with StreamingEvaluation(*problem[1:], roc=True, fars=FARS, workers=2) as evaluation:
        evaluation.add(0, problem[0])
        result = evaluation.result().roc
        assert np.isfinite(evaluation.roc.threshold)  # pruning happened
    for far in FARS:
        assert result.tar_at_far[far] == pytest.approx(
            brute_force_tar_at_far(genuine, impostor, far), abs=1e-12)


def test_write_roc_csv_and_png(tmp_path):
    rng = np.random.default_rng(1)
    result = run(random_problem(rng, 10, 40, 4, 2, "continuous"))
    written = write_roc(result, tmp_path / "roc" / "set")
    assert [p.name for p in written] == ["set.csv", "set.png"]
    lines = written[0].read_text().splitlines()
    assert lines[0] == "threshold,far,tar"
    assert len(lines) == 1 + len(result.curve.far)
    assert [float(v) for v in lines[-1].split(",")[1:]] == pytest.approx(
        [result.curve.far[-1], result.curve.tar[-1]])
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_roc_without_matplotlib_writes_csv_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rng = np.random.default_rng(1)
    written = write_roc(run(random_problem(rng, 10, 40, 4, 2, "continuous")), tmp_path / "r")
    assert [p.name for p in written] == ["r.csv"]


def test_far_key_is_a_valid_metric_name():
    assert far_key(1e-4) == "TAR_at_FAR_1e-04"


@pytest.mark.parametrize("fars", [(0.0,), (1e-3, 1.0), ()])
def test_fars_must_be_fractions(fars):
    problem = random_problem(np.random.default_rng(0), 3, 5, 2, 2, "levels")
    with pytest.raises(ReidError, match=r"ROC: each FAR must be in \(0, 1\)"):
        StreamingEvaluation(*problem[1:], roc=True, fars=fars)


def test_roc_needs_impostor_pairs():
    dist = np.array([[0.1, 0.2]])
    with StreamingEvaluation([1], [1, 1], [0], [1, 2], roc=True) as evaluation:
        evaluation.add(0, dist)
        with pytest.raises(ReidError, match="2 genuine and 0 impostor pairs"):
            evaluation.result()
