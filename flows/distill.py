"""Knowledge distillation: teacher pipeline (or an existing teacher) -> student with KD -> evaluate.

The student recipe names its teacher with KD.MODEL_CONFIG and KD.MODEL_WEIGHTS. When the
teacher's weights file exists it is only evaluated; otherwise the teacher recipe is trained
first and its precise-BN checkpoint becomes KD.MODEL_WEIGHTS. With ``compare_without_kd`` the
same student is also trained without distillation, so the table shows what KD bought.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import tasks.environment  # noqa: F401
from prefect import flow

from flows.pipeline import publish_results, result_rows, run_stages
from reid.config import CfgNode, load_config, merge_overrides
from reid.errors import ReidError
from tasks.pipeline_tasks import evaluate_task
from tasks.tracking import Tracker


def _changed(cfg: CfgNode, *overrides: str) -> CfgNode:
    """A frozen copy of ``cfg`` with ``KEY VALUE`` overrides (checked like the command line's)."""
    return merge_overrides(cfg.clone(), overrides).freeze()


def teacher_checkpoint(cfg: CfgNode, tracker: Tracker, parent: str) -> tuple[str, dict]:
    """The teacher's weights and its results: evaluated if they exist, else trained first."""
    if not cfg.KD.MODEL_CONFIG:
        raise ReidError("the student recipe must name its teacher's config in KD.MODEL_CONFIG")
    teacher_cfg = load_config(cfg.KD.MODEL_CONFIG)
    with tracker.run("teacher", parent, tags={"reid.role": "teacher"}) as run:
        tracker.log_config(run, teacher_cfg, cfg.KD.MODEL_CONFIG)
        weights = cfg.KD.MODEL_WEIGHTS
        if weights and Path(weights).is_file():
            results = evaluate_task(teacher_cfg, weights, tracker, run)["results"]
        else:
            out = run_stages(teacher_cfg, tracker, run)
            weights, results = out["checkpoint"], out["results"]
        tracker.log_results(run, results)
    return weights, results


@flow(name="reid-distill")
def distill(config: str, overrides: Optional[list[str]] = None,
            compare_without_kd: bool = True) -> dict:
    cfg = load_config(config, overrides or [])
    tracker = Tracker()
    rows = []
    with tracker.run(f"distill:{Path(config).stem}", tags={"reid.flow": "distill"}) as parent:
        tracker.log_dataset(parent, cfg)
        weights, teacher_results = teacher_checkpoint(cfg, tracker, parent)
        rows += result_rows("teacher", teacher_results)
        student_cfg = _changed(cfg, "KD.MODEL_WEIGHTS", weights)
        runs = {"student (KD)": (student_cfg, "distill")}
        if compare_without_kd:
            plain = _changed(cfg, "MODEL.META_ARCHITECTURE", "Baseline",
                             "OUTPUT_DIR", str(Path(cfg.OUTPUT_DIR) / "no-kd"))
            runs["student (no KD)"] = (plain, "train")
        results = {"teacher": teacher_results}
        for role, (role_cfg, stage) in runs.items():
            with tracker.run(role, parent, tags={"reid.role": role}) as run:
                tracker.log_config(run, role_cfg, config)
                out = run_stages(role_cfg, tracker, run, train_stage=stage)
                tracker.log_results(run, out["results"])
            results[role] = out["results"]
            rows += result_rows(role, out["results"])
        publish_results(rows, "reid-distill-results", f"{config}: teacher vs student (percent)")
    return {"results": results, "mlflow_run_id": parent}
