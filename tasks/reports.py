"""Visual reports logged to MLflow: the evaluate stage's figures and the training curves.

The figures come from ``reid.visualize`` (pure plotting); this module only finds the data in
MLflow (the training run's metric history), calls the plots and logs the PNGs. No Prefect.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from mlflow.tracking import MlflowClient

from reid.config import CfgNode
from tasks.tracking import PARENT_TAG, Tracker

logger = logging.getLogger(__name__)

REPORT_DIR = "visual"                  # under OUTPUT_DIR, and the runs' artifact path
TRAIN_STAGES = ("train", "distill")    # stage runs whose metrics are the training curves
LOSS_PREFIX = "loss"
EVAL_PREFIX = "eval."                  # PeriodicEvaluator's ``eval.<set>.<metric>``


def metric_history(client: MlflowClient, run_ids: Iterable[str], key: str
                   ) -> tuple[list[int], list[float]] | None:
    """``(steps, values)`` of ``key`` over runs given oldest first (a resumed training's run
    continues its predecessor's: a later run's value wins at a step both logged)."""
    by_step: dict[int, float] = {}
    for run_id in run_ids:
        for point in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            by_step[point.step] = point.value
    if not by_step:
        return None
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def stage_runs(client: MlflowClient, experiment_id: str, stages: Iterable[str] = TRAIN_STAGES,
               extra_filter: str = "") -> list:
    """Finished-or-not stage runs of ``stages``, oldest first."""
    runs = []
    for stage in stages:
        query = f"tags.`reid.stage` = '{stage}'" + (f" and {extra_filter}" if extra_filter else "")
        runs += client.search_runs([experiment_id], query, max_results=10_000)
    return sorted(runs, key=lambda run: run.info.start_time)


def training_runs(tracker: Tracker, parent_id: str | None, output_dir: str) -> list[str]:
    """The training stage runs of the model being evaluated, oldest first: the siblings under
    ``parent_id`` (a pipeline run), else the latest one that wrote to the same OUTPUT_DIR."""
    if parent_id:
        found = stage_runs(tracker.client, tracker.experiment_id,
                           extra_filter=f"tags.`{PARENT_TAG}` = '{parent_id}'")
        return [run.info.run_id for run in found]
    quoted = output_dir.replace("'", "\\'")
    found = stage_runs(tracker.client, tracker.experiment_id,
                       extra_filter=f"params.`OUTPUT_DIR` = '{quoted}'")
    return [found[-1].info.run_id] if found else []


def curve_keys(client: MlflowClient, run_ids: Iterable[str], metric: str = "mAP",
               terms: bool = True) -> list[str]:
    """The metric keys worth plotting: ``total_loss`` and ``eval.<set>.<metric>``, plus the
    loss terms and lr when ``terms``."""
    keys: set[str] = set()
    for run_id in run_ids:
        keys |= set(client.get_run(run_id).data.metrics)

    def wanted(key: str) -> bool:
        if key == "total_loss" or (key.startswith(EVAL_PREFIX) and key.endswith(f".{metric}")):
            return True
        return terms and (key.startswith(LOSS_PREFIX) or key == "lr")
    return sorted(filter(wanted, keys))


def series_name(key: str) -> str:
    """``eval.Market1501.mAP`` -> ``Market1501 mAP`` (the name the final value also gets)."""
    if key.startswith(EVAL_PREFIX):
        test_set, _, metric = key[len(EVAL_PREFIX):].rpartition(".")
        return f"{test_set} {metric}"
    return key


def training_curves(client: MlflowClient, run_ids: list[str], final: dict | None = None,
                    metric: str = "mAP", terms: bool = True):
    """``reid.visualize.Curves`` of the training runs (see :func:`curve_keys`); ``final``
    results (``{test set: {metric: value}}``) become stars at the last training step (none
    without a training history: there is no iteration to put them at)."""
    from reid.visualize import Curves

    curves = Curves()
    for key in curve_keys(client, run_ids, metric, terms):
        series = metric_history(client, run_ids, key)
        if series is not None:
            curves.series[series_name(key)] = series
    if not curves.series:
        return curves
    last_step = max(max(steps) for steps, _ in curves.series.values())
    for test_set, values in (final or {}).items():
        if metric in values:
            curves.final[f"{test_set} {metric}"] = (last_step, float(values[metric]))
    return curves


def log_evaluation_report(tracker: Tracker, run_id: str, cfg: CfgNode,
                          parent_id: str | None = None, results: dict | None = None) -> dict | None:
    """Plot the evaluate stage's figures into ``OUTPUT_DIR/visual`` and log them to ``run_id``
    under ``visual/``. Returns ``{"run_id", "artifact_uri", "files"}``; None if it failed: a
    figure is not worth failing a finished evaluation for, so errors are logged instead."""
    from reid.visualize import write_evaluation_report

    try:
        curves = training_curves(tracker.client, training_runs(tracker, parent_id,
                                                               str(cfg.OUTPUT_DIR)), results)
        report_dir = Path(cfg.OUTPUT_DIR) / REPORT_DIR
        written = write_evaluation_report(cfg.OUTPUT_DIR, report_dir, curves,
                                          test_sets=list(cfg.DATASETS.TESTS))
        for path in written:
            tracker.client.log_artifact(run_id, str(path), REPORT_DIR)
    except Exception:  # noqa: BLE001 (see the docstring)
        logger.warning("the visual report of the evaluate stage failed", exc_info=True)
        return None
    artifact_uri = tracker.client.get_run(run_id).info.artifact_uri
    return {"run_id": run_id, "artifact_uri": artifact_uri,
            "files": [f"{REPORT_DIR}/{path.name}" for path in written]}


def report_markdown(report: dict, title: str = "Visual report") -> str:
    """Markdown for a Prefect artifact: each figure's MLflow artifact path and URI."""
    lines = [f"## {title}", "",
             f"MLflow run `{report['run_id']}`, artifacts under `{report['artifact_uri']}`.", ""]
    for path in report["files"]:
        uri = f"{report['artifact_uri'].rstrip('/')}/{path}"
        lines += [f"### {Path(path).stem.replace('_', ' ')}", "", f"`{path}`", "",
                  f"![{Path(path).name}]({uri})", ""]
    return "\n".join(lines)
