"""End to end through Prefect and MLflow on a tiny synthetic set."""
from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from mlflow.tracking import MlflowClient

import tasks.environment  # noqa: F401  (Prefect reads its logging settings when it loads)
from conftest import RECIPE, TINY_DATA, TINY_TRAIN, as_yaml
from reid.config import load_config
from reid.errors import ReidError
from tasks.data_version import data_version

STAGES = {"prepare", "train", "precise_bn", "evaluate"}
METRICS = {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}


def children(client: MlflowClient, parent_id: str) -> dict:
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def test_pipeline_flow_records_everything(prefect_server, tiny_overrides, mlflow_uri, tmp_path):
    from flows.pipeline import pipeline
    out = pipeline(config=str(RECIPE), overrides=tiny_overrides + ["TEST.VISUALIZE", "True"])

    output_dir = Path(out["output_dir"])
    results = json.loads((output_dir / "results.json").read_text())
    assert set(results) == {"SyntheticMarket1501"}
    assert set(results["SyntheticMarket1501"]) == METRICS
    # The flow never went through the CLI's logging setup: the stages keep log.txt themselves.
    log = (output_dir / "log.txt").read_text()
    mAP = results["SyntheticMarket1501"]["mAP"]
    for line in ("INFO reid.engine.trainer: training epochs 1..", "INFO reid.utils.events: iter ",
                 "INFO reid.evaluation.evaluator: SyntheticMarket1501: Rank-1 ",
                 f"mAP {mAP:.2f}"):
        assert line in log
    assert all(0.0 <= v <= 100.0 for v in results["SyntheticMarket1501"].values())
    saved = yaml.safe_load((output_dir / "config.yaml").read_text())
    assert saved["MODEL"]["HEADS"]["NUM_CLASSES"] == 8  # taken from the training set
    assert {p.name for p in output_dir.glob("model_*.pth")} >= {
        "model_0001.pth", "model_final.pth", "model_precise_bn.pth"}

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["MODEL.BACKBONE.DEPTH"] == "18x"
    assert parent.data.metrics["SyntheticMarket1501.mAP"] == pytest.approx(
        results["SyntheticMarket1501"]["mAP"])
    inputs = parent.inputs.dataset_inputs
    version = data_version(load_config(RECIPE, tiny_overrides))  # the tiny set, untracked
    assert inputs and inputs[0].dataset.digest == version.digest[:36]
    assert parent.data.tags["reid.data.version"] == f"content:{version.digest}"
    # The MLflow run names the Prefect flow run behind it.
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as prefect_client:
        flow_run = prefect_client.read_flow_run(UUID(parent.data.tags["prefect.flow_run_id"]))
        assert prefect_client.read_flow(flow_run.flow_id).name == "reid-pipeline"
        # The library's log reaches the Prefect server, in the task runs' logs.
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.logging.handlers import APILogWorker
        APILogWorker.drain_all(timeout=30)
        logs = prefect_client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[flow_run.id])), limit=200)
        by_logger = {}
        for record in logs:
            by_logger.setdefault(record.name, []).append(record)
        assert any(r.message.startswith("iter ") and r.task_run_id
                   for r in by_logger.get("reid.utils.events", []))
        assert any(f"mAP {results['SyntheticMarket1501']['mAP']:.2f}" in r.message
                   for r in by_logger.get("reid.evaluation.evaluator", []))

    stages = children(client, parent.info.run_id)
    assert set(stages) == STAGES
    # The evaluate stage's visual report: its figures in OUTPUT_DIR/visual and on its run.
    figures = {f"SyntheticMarket1501_{kind}.png" for kind in (
        "ranks_best", "ranks_worst", "distances", "roc")} | {"training_curves.png"}
    assert {p.name for p in (output_dir / "visual").iterdir()} == figures
    assert {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id, "visual")} == {
        f"visual/{name}" for name in figures}
    assert out["visual"]["run_id"] == stages["evaluate"].info.run_id
    train = stages["train"]
    loss_history = client.get_metric_history(train.info.run_id, "total_loss")
    assert len(loss_history) >= 2 and len({m.step for m in loss_history}) >= 2
    assert {"lr", "images_per_sec"} <= set(train.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id, "checkpoints")}
    assert "checkpoints/model_final.pth" in artifacts
    assert {"config.yaml", "metrics.json"} <= {a.path for a in client.list_artifacts(
        train.info.run_id)}
    # The file holds the same training curve as the run's metric history.
    local = client.download_artifacts(train.info.run_id, "metrics.json", str(tmp_path / "dl"))
    records = [json.loads(line) for line in Path(local).read_text().splitlines()]
    history = sorted((m.step, m.value) for m in loss_history)
    training = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in training] == [step for step, _ in history]
    assert [r["total_loss"] for r in training] == pytest.approx([v for _, v in history])


def test_distill_flow_trains_teacher_then_students(prefect_server, tiny_root, tmp_path,
                                                   mlflow_uri):
    from flows.distill import run_distill
    from reid.engine.checkpoint import read_checkpoint

    tiny = {**TINY_DATA, **TINY_TRAIN, "DATASETS.ROOT": str(tiny_root)}
    teacher = tmp_path / "teacher.yml"
    teacher.write_text(f"_BASE_: {RECIPE}\n" + as_yaml({**tiny, "OUTPUT_DIR": str(tmp_path / "t")}))
    student = tmp_path / "student.yml"
    student.write_text(f"_BASE_: {RECIPE}\n" + as_yaml({
        **tiny, "OUTPUT_DIR": str(tmp_path / "s"), "MODEL.META_ARCHITECTURE": "Distiller",
        "KD.MODEL_CONFIG": str(teacher), "KD.MODEL_WEIGHTS": str(tmp_path / "t" / "missing.pth"),
        "KD.LOSS": "js"}))

    out = run_distill(str(student), max_parallel=2)

    assert set(out["results"]) == {"teacher", "student (KD)", "student (no KD)"}
    assert (tmp_path / "t" / "model_precise_bn.pth").is_file()  # the teacher was trained
    assert (tmp_path / "s" / "no-kd" / "results.json").is_file()
    # The KD student's checkpoint holds no teacher weights: it is a plain student.
    state = read_checkpoint(tmp_path / "s" / "model_final.pth")["model"]
    assert not any(key.startswith(("teacher", "model_t")) for key in state)

    client = MlflowClient(mlflow_uri)
    roles = children(client, out["mlflow_run_id"])
    assert set(roles) == {"teacher", "student (KD)", "student (no KD)"}
    kd_stages = children(client, roles["student (KD)"].info.run_id)
    assert set(kd_stages) == {"prepare", "distill", "precise_bn", "evaluate"}
    assert "loss_kd" in kd_stages["distill"].data.metrics
    # TEST.VISUALIZE false (the tiny recipe's): no retrieval examples, no visual report.
    assert not (tmp_path / "s" / "examples").exists() and not (tmp_path / "s" / "visual").exists()
    assert not client.list_artifacts(kd_stages["evaluate"].info.run_id, "visual")
    # Independent branches run concurrently (max_parallel=2): the KD and the no-KD student
    # trained at the same time, each starting before the other ended.
    kd = kd_stages["distill"].info
    plain = children(client, roles["student (no KD)"].info.run_id)["train"].info
    assert kd.status == plain.status == "FINISHED"
    assert kd.start_time < plain.end_time and plain.start_time < kd.end_time


def test_the_distill_flow_checks_the_configs_it_derives():
    """The student / no-KD configs the flow derives go through the same checks as the
    command line's (ranges included), not only the type check."""
    from flows.distill import _changed
    cfg = load_config(RECIPE, [])
    assert _changed(cfg, "MODEL.META_ARCHITECTURE", "Baseline").MODEL.META_ARCHITECTURE == \
        "Baseline"
    with pytest.raises(ReidError, match="SOLVER.MAX_EPOCH must be >= 1"):
        _changed(cfg, "SOLVER.MAX_EPOCH", "0")
