"""``reid compare`` over fake MLflow runs in a temporary store, and the evaluate stage's
visual report logging (tasks/compare.py, tasks/reports.py)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from reid.config import load_config
from reid.errors import ReidError
from tasks import reports
from tasks.compare import COMPARISON_TAG, compare
from tasks.tracking import Tracker

MD5 = "0123456789abcdef0123456789abcdef.dir"
T0 = 1_700_000_000_000  # ms


def train_child(tracker, parent, seconds, losses=(), evals=(), output_dir=None, start=T0):
    """A finished train stage run under ``parent`` that lasted ``seconds``."""
    tags = {"mlflow.parentRunId": parent, "reid.stage": "train", "mlflow.runName": "train"}
    run = tracker.client.create_run(tracker.experiment_id, start_time=start, tags=tags)
    run_id = run.info.run_id
    for step, loss in losses:
        tracker.log_metrics(run_id, {"total_loss": loss, "lr": 0.1 / step}, step)
    for step, value in evals:
        tracker.log_metrics(run_id, {"eval.Market1501.mAP": value}, step)
    if output_dir:
        tracker.client.log_param(run_id, "OUTPUT_DIR", output_dir)
    tracker.client.set_terminated(run_id, end_time=start + int(seconds * 1000))
    return run_id


def fake_pipeline(tracker, name, lr, epochs, results, trainings=(), status="FINISHED"):
    cfg = load_config(None, ["SOLVER.BASE_LR", str(lr), "SOLVER.MAX_EPOCH", str(epochs)])
    parent = tracker.start(f"pipeline:{name}", tags={"reid.flow": "pipeline",
                                                     "reid.data.version": f"dvc:{MD5}"})
    tracker.log_config(parent, cfg, f"params/{name}.yml")
    for training in trainings:
        train_child(tracker, parent, **training)
    tracker.log_results(parent, results)
    tracker.end(parent, status)
    return parent


def results(market_map, duke_map, rank1):
    return {"Market1501": {"Rank-1": rank1, "mAP": market_map, "mINP": market_map / 2},
            "DukeMTMC": {"Rank-1": rank1, "mAP": duke_map, "mINP": duke_map / 2}}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One temporary SQLite store for the module (like conftest's ``mlflow_uri``, which is
    per test: creating a store costs seconds). Tests add runs that never disturb each other's
    assertions: only finished non-stage runs with results are compared."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def store(mlflow_store):
    """Three comparable pipeline runs, and runs a comparison must leave out."""
    tracker = Tracker()
    ids = {
        "A": fake_pipeline(tracker, "A", 0.001, 10, results(50.0, 70.0, 90.0), trainings=[
            dict(seconds=30.0, losses=[(1, 4.0), (2, 3.0)], evals=[(2, 40.0)]),
            dict(seconds=40.5, losses=[(2, 2.9), (3, 2.5)], start=T0 + 60_000)]),  # resumed
        "B": fake_pipeline(tracker, "B", 0.002, 10, results(65.0, 40.0, 70.0),
                           trainings=[dict(seconds=100.0, losses=[(1, 5.0), (3, 2.0)])]),
        "C": fake_pipeline(tracker, "C", 0.003, 20, results(55.0, 80.0, 80.0),
                           trainings=[dict(seconds=12.25, losses=[(1, 6.0), (3, 1.0)])]),
    }
    # Left out: a failed run, a flow run without results, a top-level stage run (DVC path).
    fake_pipeline(tracker, "failed", 0.1, 1, results(99.0, 99.0, 99.0), status="FAILED")
    with tracker.run("distill:kd", tags={"reid.flow": "distill"}):
        pass
    with tracker.run("evaluate", tags={"reid.stage": "evaluate"}) as stage:
        tracker.log_results(stage, results(98.0, 98.0, 98.0))
    return tracker, ids


def test_compare_ranks_runs_shows_differing_params_and_logs_a_run(store, tmp_path):
    tracker, ids = store
    out = compare(output=tmp_path / "table.md")
    table = out.table
    assert list(table["run"]) == ["pipeline:C", "pipeline:A", "pipeline:B"]  # by mean mAP
    assert list(table["run id"]) == [ids["C"], ids["A"], ids["B"]]
    assert list(table["mean mAP"]) == [67.5, 60.0, 52.5]
    assert list(table["recipe"]) == ["params/C.yml", "params/A.yml", "params/B.yml"]
    assert list(table["train time (s)"]) == [12.25, 70.5, 100.0]  # A: two (resumed) trainings
    assert list(table["data version"]) == [f"dvc:{MD5}"] * 3
    fixed = ["#", "run", "run id", "recipe"] + [
        f"{s} {m}" for s in ("DukeMTMC", "Market1501") for m in ("Rank-1", "mAP", "mINP")] + [
        "mean mAP", "train time (s)", "data version", "git commit"]
    assert list(table.columns) == fixed + ["SOLVER.BASE_LR", "SOLVER.MAX_EPOCH"]
    assert list(table["SOLVER.BASE_LR"]) == ["0.003", "0.001", "0.002"]
    assert list(table["SOLVER.MAX_EPOCH"]) == ["20", "10", "10"]

    markdown = (tmp_path / "table.md").read_text().splitlines()
    assert markdown[0] == "# Run comparison (ranked by mean mAP)"
    rows = [line for line in markdown if line.startswith("| ")]
    assert len(rows) == 4 and "| 1 | pipeline:C | " + ids["C"][:8] + " |" in rows[1]
    assert ids["C"] not in rows[1]  # ids are shortened for people
    with Image.open(tmp_path / "table.png") as image:
        assert image.format == "PNG" and image.width > 800
    assert (tmp_path / "table.png").stat().st_size > 20_000

    client = MlflowClient()
    logged = client.get_run(out.run_id)
    assert logged.data.tags[COMPARISON_TAG] == "true"
    assert {a.path for a in client.list_artifacts(out.run_id)} == {
        "comparison.md", "comparison.csv", "comparison.html", "comparison.png"}

    # The comparison run itself is never compared; other metrics and formats.
    by_market = compare(metric="Market1501.mAP", output=tmp_path / "t.csv", track=False)
    assert list(by_market.table["run"]) == ["pipeline:B", "pipeline:C", "pipeline:A"]
    csv = pd.read_csv(tmp_path / "t.csv")
    assert list(csv["run id"]) == [ids["B"], ids["C"], ids["A"]]
    assert list(csv["Market1501 mAP"]) == [65.0, 55.0, 50.0]
    by_rank1 = compare(metric="Rank-1", output=tmp_path / "t.html", track=False)
    assert list(by_rank1.table["run"]) == ["pipeline:A", "pipeline:C", "pipeline:B"]
    html = (tmp_path / "t.html").read_text()
    assert "<table" in html and "ranked by mean Rank-1" in html and "pipeline:B" in html


def test_compare_filter_and_max_runs(store):
    only_ten = compare(filter_string="params.`SOLVER.MAX_EPOCH` = '10'", track=False)
    assert list(only_ten.table["run"]) == ["pipeline:A", "pipeline:B"]
    # Only SOLVER.BASE_LR differs between these two.
    assert list(only_ten.table.columns[-1:]) == ["SOLVER.BASE_LR"]
    assert "SOLVER.MAX_EPOCH" not in only_ten.table.columns
    newest = compare(max_runs=1, track=False)
    assert list(newest.table["run"]) == ["pipeline:C"]


def test_compare_errors_say_what_was_expected(store, tmp_path):
    with pytest.raises(ReidError, match="no MLflow experiment named 'nope'.*experiments there: "):
        compare(experiment="nope")
    with pytest.raises(ReidError, match=r"--output must end with \.md, \.csv, \.html, got"):
        compare(output=tmp_path / "table.txt")
    with pytest.raises(ReidError, match="--metric 'accuracy' is not logged by the compared runs; "
                                        "they have Rank-1, mAP, mINP"):
        compare(metric="accuracy", track=False)
    with pytest.raises(ReidError, match="no finished run with final results in experiment 'reid' "
                                        "matching \"params.`SOLVER.MAX_EPOCH` = '99'\""):
        compare(filter_string="params.`SOLVER.MAX_EPOCH` = '99'", track=False)
    with pytest.raises(ReidError, match="is not a valid MLflow search filter"):
        compare(filter_string="params.x ~~ 3", track=False)


def test_cli_compare_prints_the_table_and_reports_errors(store, tmp_path, capsys):
    from reid.cli import main
    assert main(["compare", "--no-track", "--output", str(tmp_path / "t.md")]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | pipeline:C |" in printed and f"wrote {tmp_path / 't.png'}" in printed
    assert main(["compare", "--experiment", "nope"]) == 2
    assert "reid: error: no MLflow experiment named 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- visual report
def test_metric_history_of_a_resumed_training_keeps_the_later_values(mlflow_store):
    tracker = Tracker()
    with tracker.run("pipeline") as parent:
        first = train_child(tracker, parent, 1, losses=[(1, 4.0), (2, 3.0)])
        second = train_child(tracker, parent, 1, losses=[(2, 2.9), (3, 2.5)], start=T0 + 5000)
    assert reports.training_runs(tracker, parent, "unused") == [first, second]
    steps, values = reports.metric_history(tracker.client, [first, second], "total_loss")
    assert (steps, values) == ([1, 2, 3], [4.0, 2.9, 2.5])


def test_training_runs_without_a_parent_match_the_output_dir(mlflow_store):
    tracker = Tracker()
    train_child(tracker, "x", 1, output_dir="logs/a")
    latest = train_child(tracker, "x", 1, output_dir="logs/a", start=T0 + 1000)
    train_child(tracker, "x", 1, output_dir="logs/b", start=T0 + 2000)
    assert reports.training_runs(tracker, None, "logs/a") == [latest]
    assert reports.training_runs(tracker, None, "logs/c") == []


def test_evaluation_report_is_logged_under_visual(mlflow_store, tmp_path):
    from reid.evaluation.examples import ExampleCollector
    from reid.evaluation.features import evaluate_features

    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(6, 4)), rng.normal(size=(20, 4))
    qp, gp = rng.integers(0, 3, 6), rng.integers(0, 3, 20)
    qc, gc = np.zeros(6, int), np.ones(20, int)
    image = tmp_path / "person.png"
    Image.new("RGB", (16, 32), (90, 90, 90)).save(image)
    collector = ExampleCollector(qp, gp, qc, gc, top_k=3)
    metrics = evaluate_features(q, g, qp, gp, qc, gc, observe=collector.observe)
    out = tmp_path / "out"
    (out / "examples").mkdir(parents=True)
    (out / "examples" / "SetA.json").write_text(json.dumps(collector.report(
        metrics.all_ap, q_paths=[str(image)] * 6, g_paths=[str(image)] * 20)))
    cfg = load_config(None, ["OUTPUT_DIR", str(out), "DATASETS.TESTS", '["SetA"]'])

    tracker = Tracker()
    with tracker.run("pipeline") as parent:
        train = train_child(tracker, parent, 1, losses=[(1, 4.0), (4, 2.0)], evals=[(2, 30.0)])
        with tracker.run("evaluate", parent, tags={"reid.stage": "evaluate"}) as evaluate:
            report = reports.log_evaluation_report(tracker, evaluate, cfg, parent,
                                                   {"SetA": {"mAP": 61.0}})
    names = ["SetA_ranks_best.png", "SetA_ranks_worst.png", "SetA_distances.png",
             "SetA_roc.png", "training_curves.png"]
    assert report["files"] == [f"visual/{n}" for n in names]
    logged = MlflowClient().list_artifacts(evaluate, "visual")
    assert sorted(a.path for a in logged) == sorted(f"visual/{n}" for n in names)
    curves = reports.training_curves(tracker.client, [train], {"SetA": {"mAP": 61.0}})
    assert set(curves.series) == {"total_loss", "lr", "Market1501 mAP"}
    assert curves.final == {"SetA mAP": (4, 61.0)}  # at the last training step
    markdown = reports.report_markdown(report, "eval")
    assert evaluate in markdown and all(f"visual/{n}" in markdown for n in names)
    assert f"({report['artifact_uri']}/visual/training_curves.png)" in markdown


def test_a_failing_report_does_not_fail_the_evaluation(mlflow_store, tmp_path, caplog):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "SetA.json").write_text("{not json")
    cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path), "DATASETS.TESTS", '["SetA"]'])
    tracker = Tracker()
    with tracker.run("evaluate") as run_id:
        assert reports.log_evaluation_report(tracker, run_id, cfg) is None
    assert "the visual report of the evaluate stage failed" in caplog.text
