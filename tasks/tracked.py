"""Stage calls wrapped in a nested MLflow run: what each stage logs, in one place.

Prefect tasks (``tasks/pipeline_tasks.py``) and the CLI's DVC stage commands both call these,
so a stage logs the same things whichever orchestrator ran it. No Prefect here.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

import torch

from reid import stages
from reid.config import CfgNode
from reid.engine.checkpoint import read_checkpoint
from tasks import model_registry as registry, reports
from tasks.tracking import Tracker, output_dir_tags


CHECKPOINTS_DIR = "checkpoints"  # the artifact folder of a stage's weights


def _stage_run(tracker: Tracker, parent_id: str | None, stage: str, cfg: CfgNode,
               resume: bool = False):
    """The stage's nested run; a resumed stage continues its unfinished run (one curve)."""
    existing = None
    if resume:
        existing = tracker.resumable(cfg.OUTPUT_DIR, {"reid.stage": stage}, parent_id)
    return tracker.run(stage, parent_id, tags={"reid.stage": stage, **output_dir_tags(cfg)},
                       existing_id=existing)


def log_weights(tracker: Tracker, run_id: str, checkpoints: Iterable[str | Path]) -> None:
    """Log model-only copies (``{"model": state_dict}``, what FastReID and ``reid eval`` load)
    of ``checkpoints`` under ``checkpoints/``, same file names. Optimizer and scheduler states
    (two thirds of an Adam checkpoint) serve only to resume, which reads OUTPUT_DIR."""
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in checkpoints:
            copy = Path(tmp) / Path(checkpoint).name
            torch.save({"model": read_checkpoint(checkpoint)["model"]}, copy)
            tracker.log_artifact(run_id, copy, CHECKPOINTS_DIR)
            copy.unlink()  # one copy on disk at a time


def trained_weights(cfg: CfgNode, result: dict) -> list[str]:
    """The checkpoints of a train result that SOLVER.LOG_CHECKPOINTS sends to MLflow: only
    files this training wrote, never older ones left in OUTPUT_DIR."""
    choice = cfg.SOLVER.LOG_CHECKPOINTS
    if choice == "all":
        return result["checkpoints"]
    return [result["checkpoint"]] if choice == "final" else []


def prepare(cfg: CfgNode, tracker: Tracker, parent_id: str | None = None) -> dict:
    with _stage_run(tracker, parent_id, "prepare", cfg) as run_id:
        tracker.log_config(run_id, cfg)
        result = stages.prepare(cfg)
        tracker.log_dataset(run_id, cfg)
        counts = {f"{name}.{split}.{what}": n for name, splits in result["datasets"].items()
                  for split, numbers in splits.items() for what, n in numbers.items()}
        tracker.log_metrics(run_id, counts)
        tracker.log_artifact(run_id, Path(cfg.OUTPUT_DIR) / "datasets.json")
    return result


def train(cfg: CfgNode, tracker: Tracker, parent_id: str | None = None, resume: bool = False,
          stage: str = "train") -> dict:
    run_fn = stages.distill if stage == "distill" else stages.train
    with _stage_run(tracker, parent_id, stage, cfg, resume=resume) as run_id:
        tracker.log_config(run_id, cfg)
        tracker.log_dataset(run_id, cfg)
        result = run_fn(cfg, sink=tracker.sink(run_id), resume=resume)
        tracker.log_artifact(run_id, result["config"])
        tracker.log_artifact(run_id, Path(cfg.OUTPUT_DIR) / stages.METRICS_FILE)
        log_weights(tracker, run_id, trained_weights(cfg, result))
    return result


def precise_bn(cfg: CfgNode, weights: str, tracker: Tracker, parent_id: str | None = None) -> dict:
    with _stage_run(tracker, parent_id, "precise_bn", cfg) as run_id:
        tracker.log_config(run_id, cfg)
        tracker.log_dataset(run_id, cfg)
        result = stages.precise_bn(cfg, weights)
        # Model-only already, unless precise-BN is off and the file is a copy of ``weights``.
        if cfg.SOLVER.LOG_CHECKPOINTS != "none":
            log_weights(tracker, run_id, [result["checkpoint"]])
    return result


def evaluate(cfg: CfgNode, weights: str, tracker: Tracker, parent_id: str | None = None,
             register: str | None = None) -> dict:
    """Evaluate; with ``register`` set, also register ``weights`` as a version of that model
    in the MLflow model registry (``tasks/registry.py``: aliases and promotion rule)."""
    with _stage_run(tracker, parent_id, "evaluate", cfg) as run_id:
        tracker.log_config(run_id, cfg)
        tracker.log_dataset(run_id, cfg)
        result = stages.evaluate(cfg, weights)
        tracker.log_results(run_id, result["results"])
        tracker.log_artifact(run_id, Path(cfg.OUTPUT_DIR) / stages.RESULTS_FILE)
        roc_dir = Path(cfg.OUTPUT_DIR) / "roc"
        if cfg.TEST.ROC_ENABLED and roc_dir.is_dir():
            tracker.client.log_artifacts(run_id, str(roc_dir), "roc")
        result["visual"] = reports.log_evaluation_report(tracker, run_id, cfg, parent_id,
                                                         result["results"])
        if register:
            result["registered"] = registry.register(tracker, run_id, register, cfg, weights)
    return result
