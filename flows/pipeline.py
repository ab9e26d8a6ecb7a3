"""The main pipeline: prepare data -> train -> precise-BN -> evaluate.

Each step is a Prefect task calling one function of ``reid/stages.py``; MLflow gets one parent
run for the pipeline and a nested run per stage. Runs with Prefect's temporary local server, or
the server named by PREFECT_API_URL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from flows.common import prefect_run_tags, publish_results, result_rows
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from reid.config import CfgNode, load_config
from reid.utils.run_lock import hold_output_dir
from tasks.distributed import check_process_count
from tasks.gpu_slots import gpu_slots
from tasks.offline import output_dir_tags
from tasks.pipeline_tasks import evaluate_task, precise_bn_task, prepare_task, train_task
from tasks.reports import report_markdown
from tasks.stage_cache import cached
from tasks.tracking import Tracker

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "params" / "synthetic.yml"


def run_stages(cfg: CfgNode, tracker: Tracker, parent_id: str, resume: bool = False,
               train_stage: str = "train", register: Optional[str] = None,
               nproc_per_node: int = 1, use_cache: bool = True) -> dict:
    """prepare -> train (or distill) -> precise-BN -> evaluate under ``parent_id``; with
    ``register``, the evaluated model becomes a version of that registered model; with
    ``nproc_per_node > 1``, training runs on that many local DDP processes. A stage whose
    inputs equal an earlier successful run's reuses its outputs (``tasks/stage_cache.py``)
    unless ``use_cache`` is false; a resumed training and a registering evaluation always
    run."""
    check_process_count(cfg, nproc_per_node)  # before any work
    prepare_task(cfg, tracker, parent_id)
    tracker.log_dataset(parent_id, cfg)  # after prepare: the data exists and is checked
    with gpu_slots(cfg, nproc_per_node):  # one training per GPU (tasks/gpu_slots.py)
        trained = cached(train_task, train_stage, cfg, tracker, parent_id,
                         use_cache=use_cache and not resume, resume=resume, stage=train_stage,
                         nproc_per_node=nproc_per_node)
    bn = cached(precise_bn_task, "precise_bn", cfg, tracker, parent_id,
                reads=(trained["checkpoint"],), use_cache=use_cache,
                weights=trained["checkpoint"])
    evaluated = cached(evaluate_task, "evaluate", cfg, tracker, parent_id,
                       reads=(bn["checkpoint"],), use_cache=use_cache and not register,
                       weights=bn["checkpoint"], register=register)
    return {"results": evaluated["results"], "checkpoint": bn["checkpoint"],
            "output_dir": cfg.OUTPUT_DIR, "visual": evaluated.get("visual")}


@flow(name="reid-pipeline")
def pipeline(config: Optional[str] = None, overrides: Optional[list[str]] = None,
             resume: bool = False, register_model: Optional[str] = None,
             nproc_per_node: int = 1, use_cache: bool = True,
             parent_run_id: Optional[str] = None, run_tags: Optional[dict] = None) -> dict:
    """Train and evaluate the recipe ``config`` (default: the synthetic recipe);
    ``register_model`` names the MLflow registered model the result is added to (promoted to
    champion when it wins); ``nproc_per_node`` > 1 trains with DDP on that many local
    processes (one per GPU, or CPU processes over gloo); ``use_cache`` false recomputes
    stages an earlier run could lend their outputs to; ``parent_run_id`` nests the MLflow run
    under that run (a sweep's), with ``run_tags`` added to it."""
    config = config or str(DEFAULT_RECIPE)
    cfg = load_config(config, overrides or [])
    with hold_output_dir(cfg.OUTPUT_DIR):
        tracker = Tracker()
        tracker.close_abandoned(cfg.OUTPUT_DIR)
        tags = {"reid.flow": "pipeline", **output_dir_tags(cfg), **prefect_run_tags(),
                **(run_tags or {})}
        # A resumed pipeline continues its unfinished run, so the train run resumes under it.
        existing = tracker.resumable(cfg.OUTPUT_DIR, {"reid.flow": "pipeline"}) if resume else None
        with tracker.run(f"pipeline:{Path(config).stem}", parent_run_id, tags=tags,
                         existing_id=existing) as parent:
            out = _tracked_pipeline(cfg, config, tracker, parent, resume, register_model,
                                    nproc_per_node, use_cache)
    return {**out, "mlflow_run_id": parent}


def _tracked_pipeline(cfg: CfgNode, config: str, tracker: Tracker, parent: str, resume: bool,
                      register_model: Optional[str], nproc_per_node: int,
                      use_cache: bool) -> dict:
    tracker.log_config(parent, cfg, config)
    out = run_stages(cfg, tracker, parent, resume=resume, register=register_model,
                     nproc_per_node=nproc_per_node, use_cache=use_cache)
    tracker.log_results(parent, out["results"])
    publish_results(result_rows(Path(config).stem, out["results"]), "reid-results",
                    f"{config}: rank metrics (percent)")
    if out["visual"]:
        create_markdown_artifact(report_markdown(out["visual"], f"{config}: evaluation"),
                                 key="reid-visual-report",
                                 description="rank lists, ROC, distances, training curves")
    return out
