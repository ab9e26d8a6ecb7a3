"""Every user-caused failure is one clear line on stderr and a non-zero exit, no traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT
from reid.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("reid: error:")]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return code, lines[0]


def test_unknown_key_names_the_closest(capsys):
    code, line = run_cli(capsys, "train", "--no-track", "--config", str(RECIPE),
                         "MODEL.BACKBON.DEPTH", "18x")
    assert code == 2
    assert line == ("reid: error: unknown config key MODEL.BACKBON.DEPTH (command line); "
                    "did you mean MODEL.BACKBONE.DEPTH?")


def test_wrong_type_names_key_and_value(capsys):
    code, line = run_cli(capsys, "train", "--no-track", "SOLVER.BASE_LR", "fast")
    assert code == 2
    assert "SOLVER.BASE_LR expects a number, got 'fast'" in line


def test_missing_dataset_shows_expected_layout(capsys, tmp_path):
    code, line = run_cli(capsys, "prepare", "--no-track", "DATASETS.ROOT", str(tmp_path),
                         "DATASETS.NAMES", '("Market1501",)', "DATASETS.TESTS", '("Market1501",)',
                         "OUTPUT_DIR", str(tmp_path / "out"))
    assert code == 2
    assert "Market1501" in line and "Market-1501-v15.09.15" in line
    assert "bounding_box_train" in line and str(tmp_path) in line


def test_malformed_dataset_names_the_problem(capsys, tmp_path):
    market = tmp_path / "Market-1501-v15.09.15"
    for split in ("bounding_box_train", "query"):  # bounding_box_test is missing
        (market / split).mkdir(parents=True)
    code, line = run_cli(capsys, "prepare", "--no-track", "DATASETS.ROOT", str(tmp_path),
                         "DATASETS.NAMES", '("Market1501",)', "DATASETS.TESTS", '("Market1501",)',
                         "OUTPUT_DIR", str(tmp_path / "out"))
    assert code == 2
    assert "bounding_box_test" in line


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_jpeg_names_the_file(capsys, tiny_root, tiny_overrides, tmp_path, workers):
    root = tmp_path / "datasets"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "SyntheticMarket1501").rglob("bounding_box_train/*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    code, line = run_cli(capsys, "train", "--no-track", *tiny_overrides, "DATASETS.ROOT", str(root),
                         "DATALOADER.NUM_WORKERS", workers, "DATALOADER.PK_SAMPLER", "False")
    assert code == 2
    assert "cannot read image" in line and victim.name in line


def test_nan_loss_stops_with_a_clear_line(capsys, tiny_overrides, tmp_path):
    code, line = run_cli(capsys, "train", "--no-track", *tiny_overrides, "SOLVER.BASE_LR", "1e30",
                         "SOLVER.WARMUP_ITERS", "0", "SOLVER.OPT", "SGD")
    assert code == 2
    assert "loss became" in line and ("nan" in line or "inf" in line)
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_real_process_exit_code_and_stderr(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    proc = subprocess.run([sys.executable, "-m", "reid.cli", "eval", "--no-track",
                           "--config", str(tmp_path / "nope.yml")],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"reid: error: config file not found: {tmp_path / 'nope.yml'} (expected a YAML file)")
    assert "Traceback" not in proc.stderr


def test_a_prefect_server_that_does_not_start_in_time_is_one_line(tmp_path):
    """Prefect's temporary server not answering in time (a busy machine: it took over Prefect's
    20 s at load 9) ends `reid run` with one line that says what to set, not a traceback."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    proc = subprocess.run([sys.executable, "-m", "reid.cli", "run", "--config", str(RECIPE),
                           "OUTPUT_DIR", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("reid: error:")]
    assert lines == ["reid: error: Prefect's temporary server did not answer within 0 s (a busy "
                     "machine?): set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or "
                     "point PREFECT_API_URL at a running Prefect server (README, Prefect server)"]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".reid.lock"]  # no stage ran


@pytest.mark.parametrize("given, used", [(None, 120), ("45", 45)])
def test_prefect_waits_two_minutes_for_its_temporary_server_unless_told(given, used):
    env = {key: value for key, value in os.environ.items()
           if key != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    if given:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = given
    probe = ("import flows; from prefect.settings import "
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; print(s.value())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert out.stdout.strip() == str(used), out.stderr


def test_reid_run_passes_its_options_to_the_flow_and_says_where_outputs_are(monkeypatch, capsys):
    import flows.pipeline
    calls = []

    def fake_pipeline(**kwargs):
        calls.append(kwargs)
        return {"results": {"SetA": {"Rank-1": 90.0, "Rank-5": 95.0, "Rank-10": 97.0,
                                     "mAP": 80.0, "mINP": 60.0}},
                "output_dir": "logs/x", "mlflow_run_id": "abc123"}
    monkeypatch.setattr(flows.pipeline, "pipeline", fake_pipeline)
    import tasks.tracking  # the link's form is test_tasks.py's; here: that it is printed
    monkeypatch.setattr(tasks.tracking, "ui_link", lambda run_id: f"<link to {run_id}>")
    assert main(["run", "--nproc-per-node", "2", "--resume", "SOLVER.MAX_EPOCH", "3"]) == 0
    assert calls[0]["nproc_per_node"] == 2 and calls[0]["resume"] is True
    assert calls[0]["overrides"] == ["SOLVER.MAX_EPOCH", "3"]
    out = capsys.readouterr().out
    assert "SetA" in out and "80.00" in out
    assert "outputs in logs/x (log.txt, metrics.json, results.json" in out
    assert "MLflow run abc123: <link to abc123>" in out
