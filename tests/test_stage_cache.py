"""Stage caching across runs (tasks/stage_cache.py): same inputs, no recomputation; a deleted
output or a changed key part, recomputation; the reusing runs name the run they reuse."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import tasks.environment  # noqa: F401  (Prefect reads its logging settings when it loads)
from conftest import RECIPE
from reid.config import load_config
from tasks.stage_cache import REUSED_TAG, config_part, stage_key

pytestmark = pytest.mark.usefixtures("one_thread")
CACHED = ("train", "precise_bn", "evaluate")


def stage_runs(client: MlflowClient, parent_id: str) -> dict:
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def reused(client: MlflowClient, parent_id: str) -> dict[str, str | None]:
    """{stage: the run it reused, or None when it ran}."""
    runs = stage_runs(client, parent_id)
    return {name: runs[name].data.tags.get(REUSED_TAG) for name in CACHED}


def test_each_stage_keys_on_its_own_part_of_the_config(tiny_overrides):
    cfg = load_config(RECIPE, tiny_overrides)
    train, evaluate = config_part("train", cfg), config_part("evaluate", cfg)
    assert "SOLVER.BASE_LR" in train and not any(k.startswith("TEST.") for k in train)
    assert "TEST.IMS_PER_BATCH" in evaluate and not any(k.startswith("SOLVER.") for k in evaluate)
    assert {"OUTPUT_DIR", "MODEL.BACKBONE.DEPTH"} <= set(train) & set(evaluate)
    other_test = load_config(RECIPE, tiny_overrides + ["TEST.IMS_PER_BATCH", "8"])
    other_lr = load_config(RECIPE, tiny_overrides + ["SOLVER.BASE_LR", "0.1"])
    assert stage_key("train", other_test) == stage_key("train", cfg)
    assert stage_key("evaluate", other_test) != stage_key("evaluate", cfg)
    assert stage_key("train", other_lr) != stage_key("train", cfg)
    assert stage_key("evaluate", other_lr) == stage_key("evaluate", cfg)  # reads weights only


def test_a_second_identical_run_reuses_every_stage_and_a_deleted_output_is_rebuilt(
        prefect_server, tiny_overrides, mlflow_uri):
    from flows.pipeline import pipeline
    client = MlflowClient(mlflow_uri)
    first = pipeline(config=str(RECIPE), overrides=tiny_overrides)
    assert reused(client, first["mlflow_run_id"]) == dict.fromkeys(CACHED)
    originals = {name: run.info.run_id
                 for name, run in stage_runs(client, first["mlflow_run_id"]).items()}

    second = pipeline(config=str(RECIPE), overrides=tiny_overrides)
    assert reused(client, second["mlflow_run_id"]) == {name: originals[name] for name in CACHED}
    assert second["results"] == first["results"]
    runs = stage_runs(client, second["mlflow_run_id"])
    history = client.get_metric_history(runs["train"].info.run_id, "total_loss")
    assert len(history) == len(client.get_metric_history(originals["train"], "total_loss"))
    assert runs["evaluate"].data.metrics == stage_runs(
        client, first["mlflow_run_id"])["evaluate"].data.metrics

    # A deleted checkpoint is never handed out: precise-BN runs again and rewrites it.
    checkpoint = Path(first["checkpoint"])
    checkpoint.unlink()
    third = pipeline(config=str(RECIPE), overrides=tiny_overrides)
    status = reused(client, third["mlflow_run_id"])
    assert status["train"] == originals["train"] and status["precise_bn"] is None
    assert checkpoint.is_file()

    # A TEST key changes the evaluation only; --no-cache (use_cache=False) reruns all.
    fourth = pipeline(config=str(RECIPE), overrides=tiny_overrides + ["TEST.IMS_PER_BATCH", "8"])
    status = reused(client, fourth["mlflow_run_id"])
    assert status["train"] == originals["train"] and status["precise_bn"] is not None
    assert status["evaluate"] is None
    results = json.loads((checkpoint.parent / "results.json").read_text())
    assert results == fourth["results"]
