"""Values of the right type that cannot be right (-1 epochs, a probability of 1.5) stop the
command before any work, with one line naming the key, the value and what was expected."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT, flat, recipe_files, write_file
from reid.cli import main
from reid.config import get_cfg, load_config
from reid.errors import ReidError

RECIPES = [str(p.relative_to(ROOT)) for p in recipe_files()]


def train_error(capsys, tmp_path, *overrides: str) -> str:
    """The one error line of `reid train` with ``overrides``; checks exit code 2 and that
    nothing was trained."""
    out = tmp_path / "out"
    code = main(["train", "--no-track", "--config", str(RECIPE), "OUTPUT_DIR", str(out),
                 *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("reid: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not (out / "model_final.pth").exists()
    return lines[0]


@pytest.mark.parametrize("key, value, expected", [
    ("SOLVER.MAX_EPOCH", "-1", "must be >= 1 (epochs to train); got -1"),
    ("SOLVER.MAX_EPOCH", "0", "must be >= 1 (epochs to train); got 0"),
    ("SOLVER.IMS_PER_BATCH", "0", "must be >= 1 (images per training batch); got 0"),
    ("TEST.IMS_PER_BATCH", "-4", "must be >= 1 (images per test batch); got -4"),
    ("DATALOADER.NUM_INSTANCE", "0", "must be >= 1"),
    ("DATALOADER.NUM_WORKERS", "-1", "must be >= 0"),
    ("SOLVER.BASE_LR", "0", "must be > 0 (the learning rate); got 0.0"),
    ("SOLVER.BASE_LR", ".nan", "must be finite and > 0 (the learning rate); got nan"),
    ("SOLVER.BASE_LR", ".inf", "must be finite and > 0 (the learning rate); got inf"),
    ("SOLVER.MOMENTUM", "-0.9", "must be in [0, 1] (SGD momentum); got -0.9"),
    ("SOLVER.WEIGHT_DECAY", "-1e-4", "must be >= 0 (weight decay); got -0.0001"),
    ("SOLVER.GAMMA", "0", "must be > 0"),
    ("SOLVER.WARMUP_FACTOR", "0", "must be in (0, 1]"),
    ("SOLVER.WARMUP_FACTOR", "1.5", "must be in (0, 1]"),
    ("SOLVER.WARMUP_ITERS", "-10", "must be >= 0"),
    ("SOLVER.ETA_MIN_LR", "-1e-7", "must be >= 0"),
    ("SOLVER.HEADS_LR_FACTOR", "0", "must be > 0"),
    ("SOLVER.STEPS", "[0, 10]", "must be a list of numbers > 0"),
    ("SOLVER.CHECKPOINT_PERIOD", "-1", "must be >= 0 (epochs between checkpoints; 0 = final only)"),
    ("TEST.EVAL_PERIOD", "-5", "must be >= 0 (epochs between evaluations in training; 0 = none)"),
    ("TEST.PRECISE_BN.NUM_ITER", "0", "must be >= 1"),
    ("INPUT.REA.PROB", "1.5", "must be in [0, 1] (a probability); got 1.5"),
    ("INPUT.FLIP_PROB", "-0.5", "must be in [0, 1] (a probability)"),
    ("INPUT.PADDING", "-2", "must be >= 0"),
    ("INPUT.SIZE_TRAIN", "[0, 128]", "must be [height, width] in pixels; got [0, 128]"),
    ("INPUT.SIZE_TEST", "[256]", "must be [height, width] in pixels"),
    ("MODEL.BACKBONE.FEAT_DIM", "0", "must be >= 1"),
    ("MODEL.HEADS.EMBEDDING_DIM", "-1", "must be >= 0 (embedding size; 0 = no embedding layer)"),
    ("MODEL.LOSSES.TRI.SCALE", "-1", "must be >= 0 (a loss weight); got -1.0"),
    ("KD.TEMPERATURE", "0", "must be > 0 (the distillation temperature)"),
])
def test_a_value_out_of_range_stops_train_with_one_line(capsys, tmp_path, key, value, expected):
    line = train_error(capsys, tmp_path, key, value)
    assert line.startswith(f"reid: error: config key {key} {expected}"), line
    assert line.endswith("(command line)"), line


def test_the_message_names_the_file_that_set_the_value(capsys, tmp_path):
    recipe = write_file(tmp_path / "bad.yml", f"_BASE_: {RECIPE}\nSOLVER:\n  MAX_EPOCH: 0\n")
    code = main(["train", "--no-track", "--config", str(recipe)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"reid: error: config key SOLVER.MAX_EPOCH must be >= 1 (epochs to train); "
        f"got 0 ({recipe})")


def test_batch_must_hold_whole_identities(capsys, tmp_path):
    line = train_error(capsys, tmp_path, "SOLVER.IMS_PER_BATCH", "30",
                       "DATALOADER.NUM_INSTANCE", "4")
    assert line == ("reid: error: SOLVER.IMS_PER_BATCH (30) must be a multiple of "
                    "DATALOADER.NUM_INSTANCE (4): a batch holds whole identities")


def test_real_process_with_negative_epochs(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "reid.cli", "train", "--no-track",
                           "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "-1"],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "reid: error: config key SOLVER.MAX_EPOCH must be >= 1 (epochs to train); "
        "got -1 (command line)"]
    assert not (out / "model_final.pth").exists()


@pytest.mark.parametrize("key", sorted(k for k in flat(get_cfg())
                                       if k.startswith("INPUT.") and k.endswith("PROB")))
def test_every_augmentation_probability_is_checked(key):
    with pytest.raises(ReidError, match=rf"config key {key} must be in \[0, 1\]"):
        load_config(None, [key, "1.01"])


def test_a_fastreid_14_spelling_is_checked_as_its_key():
    with pytest.raises(ReidError, match=r"INPUT.AUTOAUG_PROB must be in \[0, 1\].*got 2.0"):
        load_config(None, ["INPUT.AUTOAUG.PROB", "2"])


@pytest.mark.parametrize("key", sorted(k for k in flat(get_cfg())
                                       if k.startswith("MODEL.LOSSES.") and k.endswith(".SCALE")))
def test_every_loss_weight_is_checked(key):
    with pytest.raises(ReidError, match=rf"config key {key} must be >= 0"):
        load_config(None, [key, "-0.5"])


def test_the_limits_and_the_off_values_are_accepted():
    cfg = load_config(None, [
        "SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "[40, 90]",  # steps past the end: never reached
        "INPUT.REA.PROB", "0", "INPUT.FLIP_PROB", "1", "SOLVER.WARMUP_FACTOR", "1",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.MOMENTUM", "0", "SOLVER.WEIGHT_DECAY", "0",
        "SOLVER.CHECKPOINT_PERIOD", "0", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.PADDING", "0", "MODEL.HEADS.EMBEDDING_DIM", "0", "KD.SCALE", "0",
        "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCE", "4"])
    assert cfg.SOLVER.MAX_EPOCH == 1 and cfg.SOLVER.STEPS == [40, 90]


def test_the_defaults_validate():
    load_config()


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_still_loads(recipe):
    load_config(ROOT / recipe)
