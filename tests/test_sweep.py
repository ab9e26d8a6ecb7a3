"""Sweeps (reid/sweep_grid.py, flows/sweep.py): the grid's points, a local sweep with a
failing point, the MLflow nesting and the sweep's comparison."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import tasks.environment  # noqa: F401  (Prefect reads its logging settings when it loads)
from conftest import RECIPE, write_file
from reid.config import load_config
from reid.errors import ReidError
from reid.sweep_grid import expand

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = """grid:
  SOLVER.BASE_LR: [0.001, 0.002]
  SOLVER.MAX_EPOCH: [1, 2]
points:
  - {MODEL.BACKBONE.DEPTH: 34x}
"""


def test_the_grid_is_the_product_plus_the_listed_points(tmp_path):
    grid = write_file(tmp_path / "grid.yml", GRID)
    points = expand(RECIPE, grid)
    expected = [{"SOLVER.BASE_LR": lr, "SOLVER.MAX_EPOCH": epochs}
                for lr, epochs in itertools.product([0.001, 0.002], [1, 2])]
    expected.append({"MODEL.BACKBONE.DEPTH": "34x"})
    assert [p.values for p in points] == expected
    base = Path(load_config(RECIPE).OUTPUT_DIR)
    folders = set()
    for point in points:
        cfg = load_config(RECIPE, list(point.overrides))
        for key, value in point.values.items():
            section, *rest = key.split(".")
            node = cfg[section]
            for name in rest[:-1]:
                node = node[name]
            assert node[rest[-1]] == value
        assert Path(cfg.OUTPUT_DIR).parent == base / "sweep"
        folders.add(cfg.OUTPUT_DIR)
    assert len(folders) == len(points)  # points never share outputs


@pytest.mark.parametrize("text, message", [
    ("grid:\n  SOLVER.BASE_LR: 0.1\n", "grid key SOLVER.BASE_LR must list at least one value"),
    ("lr: [1]\n", "must be a mapping with 'grid:'"),
    ("points:\n  - {SOLVER.NOPE: 1}\n", "sweep point SOLVER.NOPE=1: "),
    ("points:\n  - {SOLVER.MAX_EPOCH: 0}\n", "sweep point SOLVER.MAX_EPOCH=0: "),
    ("grid:\n  SOLVER.MAX_EPOCH: [2, 2]\n", "is listed twice"),
])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, text, message):
    grid = write_file(tmp_path / "grid.yml", text)
    with pytest.raises(ReidError, match=message.replace(".", r"\.").replace("[", r"\[")):
        expand(RECIPE, grid)


def test_a_local_sweep_runs_every_point_and_a_failure_stops_none(
        prefect_server, tiny_overrides, mlflow_uri, tmp_path):
    from flows.sweep import POINT_TAG, run_sweep
    grid = write_file(tmp_path / "grid.yml", "grid:\n  SOLVER.BASE_LR: [0.00035, 0.0035]\n"
                      "points:\n  - {MODEL.WEIGHTS: 'models:/nobody@champion'}\n")
    overrides = tiny_overrides + ["SOLVER.MAX_EPOCH", "1", "TEST.PRECISE_BN.ENABLED", "False"]
    out = run_sweep(str(RECIPE), str(grid), overrides, max_parallel=2)

    assert [o["point"] for o in out["failed"]] == ["MODEL.WEIGHTS=models:/nobody@champion"]
    assert "there is no registered model 'nobody'" in out["failed"][0]["error"]
    client = MlflowClient(mlflow_uri)
    sweep = client.get_run(out["mlflow_run_id"])
    assert sweep.info.run_name == "sweep:synthetic" and sweep.info.status == "FINISHED"
    exp = sweep.info.experiment_id
    nested = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    by_point = {run.data.tags[POINT_TAG]: run for run in nested}
    assert set(by_point) == {o["point"] for o in out["outcomes"]}
    finished = {p: r for p, r in by_point.items() if r.info.status == "FINISHED"}
    assert set(finished) == {"SOLVER.BASE_LR=0.00035", "SOLVER.BASE_LR=0.0035"}
    # The comparison ranks the finished points by mAP, best first.
    ranked = sorted(finished.values(), key=lambda r: -r.data.metrics["SyntheticMarket1501.mAP"])
    assert out["ranked"] == [r.info.run_id for r in ranked]
    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id, "sweep")}
    assert {"sweep/comparison.md", "sweep/comparison.csv", "sweep/comparison.html",
            "sweep/comparison.png", "sweep/summary.md", "sweep/grid.yml"} <= artifacts
    assert "failed: `MODEL.WEIGHTS=models:/nobody@champion`: " in out["markdown"]
    # The same sweep run again reuses the finished points' stages: test_sweep_workers.py (the
    # re-run after a lost worker) and test_stage_cache.py.


@pytest.mark.parametrize("argv, message", [
    (["sweep"], "reid sweep needs --grid FILE.yml"),
    (["sweep", "--grid", "nowhere.yml"], "--grid nowhere.yml does not exist"),
    (["sweep", "--grid", "GRID", "--max-parallel", "0"], "--max-parallel must be at least 1"),
])
def test_reid_sweep_refuses_bad_options_in_one_line(argv, message, capsys, tmp_path):
    from reid.cli import main
    grid = write_file(tmp_path / "grid.yml", "grid:\n  SOLVER.MAX_EPOCH: [1]\n")
    assert main([str(grid) if a == "GRID" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reid: error: ") and message in err[0]


def test_a_point_whose_process_died_is_lost_not_waited_for(mlflow_uri):
    """A worker killed mid-sweep leaves its point's pipeline run RUNNING with a dead process:
    the sweep reports that point lost (and marks its flow run Crashed) instead of hanging."""
    import socket
    import subprocess
    import sys

    from flows.common import PROCESS_TAG
    from flows.sweep import POINT_TAG, SWEEP_TAG, lost_process
    from tasks.tracking import Tracker
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    tracker = Tracker()
    host = socket.gethostname()
    for point, process in (("a", f"{host}:{dead.pid}"), ("b", f"{host}:{os.getpid()}"),
                           ("c", f"elsewhere:{dead.pid}")):
        tracker.start(f"pipeline:{point}", tags={SWEEP_TAG: "S", POINT_TAG: point,
                                                 PROCESS_TAG: process})  # left RUNNING
    assert f"process {host}:{dead.pid} ended without finishing" in lost_process(tracker, "S", "a")
    assert lost_process(tracker, "S", "b") is None  # alive
    assert lost_process(tracker, "S", "c") is None  # another machine: not judged from here
    assert lost_process(tracker, "other sweep", "a") is None
