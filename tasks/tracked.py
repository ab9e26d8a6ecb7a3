"""Stage calls wrapped in a nested MLflow run: what each stage logs, in one place.

Every adapter has the signature ``adapter(stage, cfg, tracker, parent_id=None, **inputs)``
and is named by its entry of the stage table (``reid.stages.STAGES``). Prefect tasks
(``tasks/pipeline_tasks.py``) and the CLI's stage commands (the DVC path) call them, with a
``Tracker`` or, for ``--no-track``, a ``NullTracker``, so a stage logs the same things
whichever orchestrator ran it. No Prefect here.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from reid.config import CfgNode
from reid.engine.checkpoint import read_checkpoint
from reid.engine.events import METRICS_FILE
from reid.stage_table import Stage
from reid.training_curve import CURVE_FILE, write_training_curve
from reid.utils import comm
from reid.utils.collect_env import collect_env_info
from tasks.offline import model_uris, output_dir_tags

# MLflow is imported only where a stage uses it (a tracked run, or weights named by an MLflow
# URI): a `--no-track` stage and the ranks other than 0 never load it (tasks/offline.py).
if TYPE_CHECKING:
    from tasks.tracking import Tracker


CHECKPOINTS_DIR = "checkpoints"  # the artifact folder of a stage's weights
ENVIRONMENT_FILE = "environment.txt"  # every training run's software and GPUs


@contextmanager
def stage_run(tracker: Tracker, parent_id: str | None, stage: Stage, cfg: CfgNode,
              resume: bool = False) -> Iterator[tuple[str | None, CfgNode]]:
    """(the stage's nested run, the config the stage runs with), with the config logged (the
    data version is the adapter's to log: before the stage, or after it for ``prepare``,
    which may make the data); a resumed stage continues its unfinished run (one curve).

    Weights named by MLflow URIs (MODEL.WEIGHTS, KD.MODEL_WEIGHTS: ``tasks/lineage.py``) are
    resolved to local files before the run starts, and the run is tagged with their lineage
    (the teacher's run, registered version and sha256); the logged config keeps the URIs."""
    local_cfg, lineage_tags = cfg, {}
    if any(model_uris(cfg).values()):
        from tasks import lineage
        uri = tracker.client.tracking_uri if tracker.enabled else None
        local_cfg, lineage_tags = lineage.resolve_config(cfg, uri)
    existing = None
    if resume:
        existing = tracker.resumable(cfg.OUTPUT_DIR, {"reid.stage": stage.name}, parent_id)
    tags = {"reid.stage": stage.name, **output_dir_tags(cfg), **lineage_tags}
    with tracker.run(stage.name, parent_id, existing_id=existing, tags=tags) as run_id:
        tracker.log_config(run_id, cfg)
        yield run_id, local_cfg


def log_outputs(tracker: Tracker, run_id: str | None, cfg: CfgNode, result: dict) -> None:
    """What every stage reports: its ``metrics`` and the ``files`` it wrote, each at its place
    under OUTPUT_DIR (``roc/Market1501.csv`` stays in ``roc/``)."""
    tracker.log_metrics(run_id, result.get("metrics", {}))
    out = Path(cfg.OUTPUT_DIR).resolve()
    for path in map(Path, result.get("files", [])):
        folder = path.resolve().parent
        inside = folder.is_relative_to(out) and folder != out
        tracker.log_artifact(run_id, path, str(folder.relative_to(out)) if inside else None)


def tracked_stage(stage: Stage, cfg: CfgNode, tracker: Tracker, parent_id: str | None = None,
                  **inputs) -> dict:
    """The default adapter: the stage in its run, its metrics and files logged."""
    with stage_run(tracker, parent_id, stage, cfg) as (run_id, cfg):
        result = stage.run(cfg, **inputs)
        tracker.log_dataset(run_id, cfg)  # after the stage: prepare may have made the data
        log_outputs(tracker, run_id, cfg, result)
    return result


def log_weights(tracker: Tracker, run_id: str | None, checkpoints: Iterable[str | Path]) -> None:
    """Log model-only copies (``{"model": state_dict}``, what FastReID and ``reid eval`` load)
    of ``checkpoints`` under ``checkpoints/``, same file names. Optimizer and scheduler states
    (two thirds of an Adam checkpoint) serve only to resume, which reads OUTPUT_DIR."""
    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in checkpoints:
            copy = Path(tmp) / Path(checkpoint).name
            torch.save({"model": read_checkpoint(checkpoint)["model"]}, copy)
            tracker.log_artifact(run_id, copy, CHECKPOINTS_DIR)
            copy.unlink()  # one copy on disk at a time


def log_environment(tracker: Tracker, run_id: str | None) -> None:
    """The software and GPUs the run used (``reid info --env``) as ``environment.txt``."""
    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ENVIRONMENT_FILE
        path.write_text(collect_env_info())
        tracker.log_artifact(run_id, path)


def trained_weights(cfg: CfgNode, result: dict) -> list[str]:
    """The checkpoints of a train result that SOLVER.LOG_CHECKPOINTS sends to MLflow: only
    files this training wrote, never older ones left in OUTPUT_DIR: "final" = model_final.pth
    and model_best.pth (when periodic evaluations chose one), "all" = also the periodic ones
    still in OUTPUT_DIR (SOLVER.CHECKPOINT_KEEP deletes older ones during training)."""
    choice = cfg.SOLVER.LOG_CHECKPOINTS
    final = [result["checkpoint"]] + ([result["best"]] if result.get("best") else [])
    if choice == "all":
        periodic = [path for path in result["checkpoints"] if path not in final]
        return list(dict.fromkeys(p for p in periodic if Path(p).is_file())) + final
    return final if choice == "final" else []


def train(stage: Stage, cfg: CfgNode, tracker: Tracker, parent_id: str | None = None,
          resume: bool = False) -> dict:
    """``train`` or ``distill``: per-iteration metrics through the tracker's sink; the
    training curve also as ``training_curve.csv`` (what dvc.yaml's plots read)."""
    with stage_run(tracker, parent_id, stage, cfg, resume=resume) as (run_id, cfg):
        tracker.log_dataset(run_id, cfg)
        log_environment(tracker, run_id)
        result = stage.run(cfg, sink=tracker.sink(run_id), resume=resume)
        if comm.is_main_process() and (Path(cfg.OUTPUT_DIR) / METRICS_FILE).is_file():
            curve = write_training_curve(Path(cfg.OUTPUT_DIR) / METRICS_FILE,
                                         Path(cfg.OUTPUT_DIR) / CURVE_FILE)
            result["files"] = [*result.get("files", []), str(curve)]
        log_outputs(tracker, run_id, cfg, result)
        log_weights(tracker, run_id, trained_weights(cfg, result))
    return result


def precise_bn(stage: Stage, cfg: CfgNode, tracker: Tracker, parent_id: str | None = None,
               weights: str = "") -> dict:
    with stage_run(tracker, parent_id, stage, cfg) as (run_id, cfg):
        tracker.log_dataset(run_id, cfg)
        result = stage.run(cfg, weights)
        # Model-only already, unless precise-BN is off and the file is a copy of ``weights``.
        if cfg.SOLVER.LOG_CHECKPOINTS != "none":
            log_weights(tracker, run_id, [result["checkpoint"]])
    return result


def evaluate(stage: Stage, cfg: CfgNode, tracker: Tracker, parent_id: str | None = None,
             weights: str = "", register: str | None = None) -> dict:
    """Evaluate; with ``register`` set, also register ``weights`` as a version of that model
    in the MLflow model registry (``tasks/model_registry.py``: aliases and promotion rule)."""
    with stage_run(tracker, parent_id, stage, cfg) as (run_id, cfg):
        tracker.log_dataset(run_id, cfg)
        result = stage.run(cfg, weights)
        tracker.log_results(run_id, result["results"])
        log_outputs(tracker, run_id, cfg, result)
        # The report reads the training curves back from MLflow; TEST.VISUALIZE false: no
        # figures at all (drawing them costs seconds per evaluation).
        if tracker.enabled and cfg.TEST.VISUALIZE:
            from tasks import reports
            result["visual"] = reports.log_evaluation_report(tracker, run_id, cfg, parent_id,
                                                             result["results"])
        if register:
            from tasks import model_registry
            result["registered"] = model_registry.register(tracker, run_id, register, cfg, weights)
    return result
