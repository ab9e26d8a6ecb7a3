"""The pipeline flow training with DDP: torchrun workers (2 CPU processes over gloo)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RECIPE
from reid.config import load_config
from reid.errors import ReidError
from tasks import distributed
from tasks.tracking import EXPERIMENT


def test_pipeline_trains_on_two_processes_and_tracks_like_one(prefect_server, tiny_overrides,
                                                              mlflow_uri):
    from flows.pipeline import pipeline
    out = pipeline(config=str(RECIPE), overrides=tiny_overrides, nproc_per_node=2)

    output_dir = Path(out["output_dir"])
    log = (output_dir / "log.txt").read_text()
    assert "joined process group: rank 0 of 2 (gloo)" in log
    assert "rank 1 of 2" not in log  # only rank 0 writes the log
    results = json.loads((output_dir / "results.json").read_text())
    assert results == out["results"] and set(results) == {"SyntheticMarket1501"}

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_run(out["mlflow_run_id"]).info.experiment_id])
    children = {r.info.run_name: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == out["mlflow_run_id"]}
    assert set(children) == {"prepare", "train", "precise_bn", "evaluate"}
    train = children["train"]
    assert train.info.status == "FINISHED"  # logged by rank 0 of the workers
    assert len(client.get_metric_history(train.info.run_id, "total_loss")) >= 2
    assert "checkpoints/model_final.pth" in {
        a.path for a in client.list_artifacts(train.info.run_id, "checkpoints")}


def test_a_user_error_in_the_workers_is_raised_with_their_line(tiny_overrides, mlflow_uri):
    cfg = load_config(str(RECIPE), tiny_overrides + ["SOLVER.BASE_LR", "1e30"])
    with pytest.raises(ReidError, match=r"loss became .* on rank \d at epoch 1, .*try a lower "
                       r"SOLVER.BASE_LR"):
        distributed.train(cfg, 2, tracking_uri=mlflow_uri)
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    train = client.search_runs([experiment], "attributes.run_name = 'train'")
    assert [r.info.status for r in train] == ["FAILED"]  # rank 0's stage run, ended as failed


def test_process_counts_that_cannot_work_are_refused(tiny_overrides):
    cfg = load_config(str(RECIPE), tiny_overrides)
    with pytest.raises(ReidError, match="nproc_per_node must be >= 1, got 0"):
        distributed.check_process_count(cfg, 0)


def test_the_launch_command_runs_the_cli_stage_under_torchrun(tmp_path):
    assert distributed.launch_command(tmp_path / "c.yaml", 4, "distill", resume=True) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "reid.cli", "distill", "--config", str(tmp_path / "c.yaml"), "--resume"]
