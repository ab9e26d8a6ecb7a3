"""The stage table is the one declaration of each stage: the CLI's commands, the Prefect
tasks, the pipeline's order and dvc.yaml follow it; adding a stage is one entry plus its
function (the example below), tracked or not through the same adapter call."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT
from reid.cli import build_parser, main
from reid.stage_table import PIPELINE, STAGES, Stage, register_stage


def count_images(cfg, pattern: str = "*.jpg") -> dict:
    """The example stage: counts the files under DATASETS.ROOT and writes the count."""
    count = sum(1 for _ in Path(cfg.DATASETS.ROOT).rglob(pattern))
    out = Path(cfg.OUTPUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    written = out / "count.json"
    written.write_text(json.dumps({"images": count}))
    return {"metrics": {"images": count}, "files": [str(written)]}


@pytest.fixture
def example_stage():
    stage = register_stage(Stage("count_images", count_images, "count the dataset's images"))
    yield stage
    del STAGES[stage.name]


def test_adding_a_stage_is_one_entry_plus_its_function(example_stage, tiny_root, tmp_path,
                                                       mlflow_uri):
    out = tmp_path / "out"
    args = ["DATASETS.ROOT", str(tiny_root), "OUTPUT_DIR", str(out)]
    assert main(["count-images", *args]) == 0  # the command is the name with dashes
    expected = sum(1 for _ in tiny_root.rglob("*.jpg"))
    assert json.loads((out / "count.json").read_text()) == {"images": expected}

    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("reid").experiment_id])
    assert run.info.run_name == "count_images" and run.info.status == "FINISHED"
    assert run.data.tags["reid.stage"] == "count_images"
    assert run.data.metrics == {"images": expected}
    assert run.data.params["DATASETS.ROOT"] == str(tiny_root)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml", "count.json"]

    (out / "count.json").unlink()
    assert main(["count-images", "--no-track", *args]) == 0  # the same call, a NullTracker
    assert (out / "count.json").is_file()
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_every_stage_is_a_command_with_its_inputs_as_options():
    commands = build_parser()._subparsers._group_actions[0].choices
    for stage in STAGES.values():
        parser = commands[stage.command]
        options = {opt for action in parser._actions for opt in action.option_strings}
        assert {"--config", "--no-track"} <= options
        assert {f"--{name}" for name in stage.inputs} <= options, stage.name
        for alias in stage.aliases:
            assert commands[alias] is parser
    assert commands["precise-bn"] is not None and "precise_bn" not in commands


def test_the_pipeline_and_dvc_yaml_follow_the_table():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(dvc) == PIPELINE  # DVC stage names are the table's names, in its order
    for name, spec in dvc.items():
        assert spec["cmd"].startswith(f"reid {STAGES[name].command} "), spec["cmd"]
    from flows.pipeline import run_stages
    source = inspect.getsource(run_stages)
    # Called directly, or through the stage cache: cached(train_task, ...).
    positions = [source.index(f"{name}_task") for name in PIPELINE]
    assert positions == sorted(positions)  # the flow calls the tasks in the table's order


def test_every_adapter_takes_the_same_call():
    for stage in STAGES.values():
        params = list(inspect.signature(stage.adapter()).parameters)
        assert params[:4] == ["stage", "cfg", "tracker", "parent_id"], stage.name
        function = inspect.signature(stage.adapter()).parameters
        assert set(stage.inputs) <= set(function) or "inputs" in function, stage.name


def test_the_null_tracker_offers_what_the_adapters_call():
    from tasks.offline import NullTracker
    from tasks.tracking import Tracker
    used = ["run", "resumable", "sink", "log_config", "log_dataset", "log_metrics",
            "log_results", "log_artifact", "set_tags"]
    for name in used:
        assert callable(getattr(NullTracker, name)) and callable(getattr(Tracker, name)), name
    null = NullTracker()
    with null.run("train") as run_id:
        null.log_metrics(run_id, {"loss": 1.0})
    assert run_id is None and null.sink(None) is None and not null.enabled


def test_a_name_is_declared_once():
    with pytest.raises(ValueError, match="declared twice"):
        register_stage(Stage("train", count_images, "again"))


def test_a_stage_s_files_are_logged_at_their_place_under_output_dir(tmp_path):
    from reid.config import load_config
    from tasks.tracked import log_outputs

    class Recorder:
        def __init__(self):
            self.calls = []

        def log_metrics(self, run_id, metrics):
            self.calls.append(("metrics", metrics))

        def log_artifact(self, run_id, path, artifact_path=None):
            self.calls.append((Path(path).name, artifact_path))

    out = tmp_path / "out"
    cfg = load_config(None, ["OUTPUT_DIR", str(out)])
    recorder = Recorder()
    log_outputs(recorder, "run", cfg, {"metrics": {"n": 1.0}, "files": [
        out / "results.json", out / "roc" / "Market1501.csv", tmp_path / "elsewhere.txt"]})
    assert recorder.calls == [("metrics", {"n": 1.0}), ("results.json", None),
                              ("Market1501.csv", "roc"), ("elsewhere.txt", None)]
