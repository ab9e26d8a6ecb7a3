"""Iteration-exact resume through the real command: ``reid train`` killed with SIGKILL inside an
epoch, then ``reid train --resume``, against the same training run without interruption (the
reference, in this process); and the inputs a resume must refuse, each with one line."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import RECIPE, ROOT, TINY_DATA, TINY_TRAIN, as_overrides
from reid import stages
from reid.config import load_config
from reid.engine.checkpoint import LAST_CHECKPOINT
from reid.engine.events import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

# 3 iterations per epoch (48 images, batches of 16); checkpoints after iterations 4 and 8,
# both inside an epoch; metrics averaged over 5 iterations, so a resume point falls inside a
# window of the metrics being averaged too.
RESUMABLE = {
    "MODEL.BACKBONE.NAME": "build_osnet_backbone",
    "MODEL.BACKBONE.DEPTH": "x0_25",
    "MODEL.BACKBONE.FEAT_DIM": 128,
    "SOLVER.MAX_EPOCH": 3,
    "SOLVER.CHECKPOINT_PERIOD": 0,
    "SOLVER.CHECKPOINT_PERIOD_ITERS": 4,
    "SOLVER.LOG_PERIOD": 5,
}
TOLERANCE = 1e-6


def overrides(root: Path, output: Path, **changes) -> list[str]:
    return as_overrides({**TINY_DATA, **TINY_TRAIN, **RESUMABLE, "DATASETS.ROOT": str(root),
                         "OUTPUT_DIR": str(output), **changes})


def reid_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "reid.cli", *args]


def child_env() -> dict:
    import os
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory, one_thread) -> Path:
    """The uninterrupted run (same recipe, same seed), trained here."""
    output = tmp_path_factory.mktemp("reference") / "out"
    stages.train(load_config(str(RECIPE), overrides(tiny_root, output)))
    return output


def kill_after_first_checkpoint(command: list[str], output: Path) -> int:
    """Run ``command``, SIGKILL it once its first periodic checkpoint is in place; the
    iteration that checkpoint resumes at."""
    proc = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not (output / LAST_CHECKPOINT).is_file():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the training finished before the kill"
    last = output / (output / LAST_CHECKPOINT).read_text().strip()
    return int(torch.load(last, weights_only=True)["iteration"])


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_inside_an_epoch_then_resume_equals_the_uninterrupted_run(
        reference, tiny_root, tmp_path, workers):
    output = tmp_path / "out"
    args = ["train", "--no-track", "--config", str(RECIPE),
            *overrides(tiny_root, output, **{"DATALOADER.NUM_WORKERS": workers})]
    resumed_at = kill_after_first_checkpoint(reid_command(*args), output)
    assert resumed_at in (4, 8)  # inside epoch 2 or 3 (3 iterations per epoch)
    done = subprocess.run(reid_command(*args, "--resume"), cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"from iteration {resumed_at + 1}" in (output / "log.txt").read_text()

    expected = read_metrics(reference / "metrics.json")
    got = read_metrics(output / "metrics.json")
    assert [r["iteration"] for r in got] == [r["iteration"] for r in expected]
    compared = 0
    for mine, theirs in zip(got, expected):
        if mine["iteration"] <= resumed_at:
            continue
        for key in ("loss_cls", "loss_triplet", "total_loss", "lr", "epoch"):
            assert mine[key] == pytest.approx(theirs[key], abs=TOLERANCE), (mine, key)
        compared += 1
    assert compared >= 1
    final, expected_final = weights(output / "model_final.pth"), \
        weights(reference / "model_final.pth")
    assert final.keys() == expected_final.keys()
    for key, value in expected_final.items():
        difference = (final[key].double() - value.double()).abs().max().item() \
            if value.numel() else 0.0
        assert difference <= TOLERANCE, key


def wait_for_a_record(proc: subprocess.Popen, output: Path) -> None:
    deadline = time.monotonic() + 300
    metrics = output / "metrics.json"
    while not (metrics.is_file() and read_metrics(metrics)):
        assert proc.poll() is None, "training ended before its first metrics record"
        assert time.monotonic() < deadline, "no metrics after 300 s"
        time.sleep(0.02)


def test_sigterm_writes_a_checkpoint_at_the_current_iteration_and_resume_continues(
        reference, tiny_root, tmp_path):
    output = tmp_path / "out"
    # no periodic checkpoint: the one to resume from is the signal's
    args = ["train", "--no-track", "--config", str(RECIPE),
            *overrides(tiny_root, output, **{"SOLVER.CHECKPOINT_PERIOD_ITERS": 0})]
    proc = subprocess.Popen(reid_command(*args), cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_record(proc, output)
        seen = read_metrics(output / "metrics.json")[-1]["iteration"]
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    stopped_at = int(last.split(" at iteration ")[1].split(";")[0])
    checkpoint = output / f"model_iter_{stopped_at:07d}.pth"
    assert last == (f"reid: stopped: SIGTERM at iteration {stopped_at}; checkpoint {checkpoint};"
                    " --resume continues from it")
    assert seen <= stopped_at < 9
    assert torch.load(checkpoint, weights_only=True)["iteration"] == stopped_at
    assert (output / LAST_CHECKPOINT).read_text() == checkpoint.name

    done = subprocess.run(reid_command(*args, "--resume"), cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {r["iteration"]: r for r in read_metrics(reference / "metrics.json")}
    for record in read_metrics(output / "metrics.json"):
        if record["iteration"] > stopped_at:
            assert record["total_loss"] == pytest.approx(
                expected[record["iteration"]]["total_loss"], abs=TOLERANCE)
    final, expected_final = weights(output / "model_final.pth"), \
        weights(reference / "model_final.pth")
    for key, value in expected_final.items():
        assert torch.allclose(final[key].double(), value.double(), rtol=0, atol=TOLERANCE), key
