"""Prefect task adapters and the MLflow tracker, without a Prefect server."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from prefect.states import Failed

from reid.config import load_config
from reid.errors import ReidError
from tasks.data_version import DataVersion, read_dvc_out
from tasks.pipeline_tasks import transient_only
from tasks.tracking import Tracker


@pytest.mark.parametrize("error, retried", [
    (ReidError("dataset not found"), False),   # the user must fix it: a retry fails the same way
    (OSError("NFS hiccup"), True),
    (RuntimeError("tracking store busy"), True),
])
def test_retries_only_transient_failures(error, retried):
    assert transient_only(None, None, Failed(data=error)) is retried


def test_tracker_nests_runs_and_logs_config_metrics_dataset(tmp_path, mlflow_uri):
    cfg = load_config(None, ["DATASETS.ROOT", str(tmp_path)])
    md5 = "0123456789abcdef0123456789abcdef.dir"
    version = DataVersion("dvc", md5, str(tmp_path), 1, str(tmp_path.parent / "x.dvc"))
    tracker = Tracker()
    with tracker.run("pipeline") as parent:
        tracker.log_config(parent, cfg)
        tracker.log_dataset(parent, cfg, version)
        with tracker.run("train", parent) as child:
            sink = tracker.sink(child)
            sink({"total_loss": 2.0, "lr": 0.1}, 1)
            sink({"total_loss": 1.5, "lr": 0.1, "bad": float("nan")}, 2)
        tracker.log_results(parent, {"Market1501": {"mAP": 42.0, "Rank-1": 60.5}})
    client = MlflowClient(mlflow_uri)
    run = client.get_run(parent)
    assert run.data.params["DATASETS.ROOT"] == str(tmp_path)
    assert run.data.metrics == {"Market1501.mAP": 42.0, "Market1501.Rank-1": 60.5}
    assert (run.data.tags["reid.data.version"], run.data.tags["dvc.data.md5"]) == (
        f"dvc:{md5}", md5)
    dataset = run.inputs.dataset_inputs[0].dataset
    assert (dataset.source_type, dataset.source, dataset.digest) == ("dvc", str(tmp_path), md5)
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent)}
    child_run = client.get_run(child)
    assert child_run.data.tags["mlflow.parentRunId"] == parent
    history = [(m.step, m.value) for m in client.get_metric_history(child, "total_loss")]
    assert sorted(history) == [(1, 2.0), (2, 1.5)]
    assert "bad" not in child_run.data.metrics  # non-finite values are not sent


def test_failed_block_marks_the_run_failed_with_its_error(mlflow_uri):
    tracker = Tracker()
    with pytest.raises(ReidError):
        with tracker.run("broken") as run_id:
            raise ReidError("boom\nsecond line")
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["reid.error"] == "ReidError: boom second line"


def test_an_interrupted_block_marks_the_run_killed_without_an_error(mlflow_uri):
    tracker = Tracker()
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("stopped") as run_id:
            raise KeyboardInterrupt
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "KILLED" and "reid.error" not in run.data.tags


def test_read_dvc_out_reads_a_dvc_file(tmp_path):
    assert read_dvc_out(tmp_path / "absent.dvc") is None
    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc.dir\n  path: data\n")
    assert read_dvc_out(tmp_path / "data.dvc") == {"md5": "abc.dir", "path": "data"}


def test_cli_stage_nests_under_reid_parent_run_id(tiny_overrides, mlflow_uri, monkeypatch):
    """DVC's stage processes can be grouped under one run with REID_PARENT_RUN_ID."""
    from reid.cli import main
    tracker = Tracker()
    parent = tracker.start("dvc repro")
    monkeypatch.setenv("REID_PARENT_RUN_ID", parent)
    assert main(["prepare", *tiny_overrides]) == 0
    client = MlflowClient(mlflow_uri)
    children = client.search_runs([tracker.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [run.info.run_name for run in children] == ["prepare"]
    assert children[0].data.metrics["SyntheticMarket1501.train.ids"] == 8


@pytest.mark.parametrize("logged, epochs, expected", [
    (None, 1, {"model_final.pth"}),  # the default, "final"
    ("all", 2, {"model_0001.pth", "model_final.pth"}),
    ("none", 1, set()),
])
def test_stages_log_model_only_copies_of_their_own_checkpoints(logged, epochs, expected,
                                                               tiny_overrides, mlflow_uri,
                                                               tmp_path):
    """SOLVER.LOG_CHECKPOINTS: an earlier run's checkpoints left in OUTPUT_DIR are never
    logged, and what is logged holds the model alone (no optimizer state) and loads strictly.
    Precise-BN off makes model_precise_bn.pth a copy of the training checkpoint."""
    import torch

    import reid
    from reid.cli import main
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model_0001.pth", "model_0003.pth"):  # left by an earlier run
        torch.save({"model": {}, "optimizer": {}, "epoch": 3}, out / name)
    overrides = [*tiny_overrides, "SOLVER.MAX_EPOCH", str(epochs), "TEST.PRECISE_BN.ENABLED",
                 "False", *(["SOLVER.LOG_CHECKPOINTS", logged] if logged else [])]
    assert main(["train", *overrides]) == 0
    assert main(["precise-bn", *overrides]) == 0

    client = MlflowClient(mlflow_uri)
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs([Tracker().experiment_id])}
    bn_expected = set() if logged == "none" else {"model_precise_bn.pth"}
    for stage, names in (("train", expected), ("precise_bn", bn_expected)):
        artifacts = client.list_artifacts(runs[stage], "checkpoints")
        assert {a.path for a in artifacts} == {f"checkpoints/{name}" for name in names}
        for name in names:
            local = client.download_artifacts(runs[stage], f"checkpoints/{name}",
                                              str(tmp_path / stage))
            assert set(torch.load(local, weights_only=True)) == {"model"}
            reid.load_model(out / "config.yaml", local)  # strict: every key, every shape


def test_experiments_are_marked_as_model_training_for_the_mlflow_ui(mlflow_uri):
    """MLflow 3's UI opens an unmarked experiment on its GenAI overview; the kind tag (the one
    the UI's own 'Model training' switch writes) makes it open on the runs."""
    client = MlflowClient(mlflow_uri)
    created = Tracker(mlflow_uri, experiment="fresh")
    assert client.get_experiment(created.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    older = client.create_experiment("older")  # made before the mark existed
    Tracker(mlflow_uri, experiment="older")
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind":
                                                      "genai_development"})
    Tracker(mlflow_uri, experiment="chosen")  # a kind the user picked is theirs
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_the_ui_link_opens_the_run_in_the_model_training_view(mlflow_uri):
    from tasks.tracking import ui_link
    tracker = Tracker()
    run_id = tracker.start("train")
    page = f"#/experiments/{tracker.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    assert ui_link(run_id) == (f"mlflow ui --backend-store-uri {mlflow_uri}, then "
                               f"http://127.0.0.1:5000/{page}")
