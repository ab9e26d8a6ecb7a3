"""Knowledge distillation: teacher pipeline (or an existing teacher) -> student with KD -> evaluate.

The student recipe names its teacher with KD.MODEL_CONFIG and KD.MODEL_WEIGHTS: one path
each, or (FastReID 1.4) lists of one entry per teacher. Every teacher is handled alike: when
its weights file exists it is only evaluated; otherwise its recipe is trained first and its
precise-BN checkpoint takes its place in KD.MODEL_WEIGHTS (an empty KD.MODEL_WEIGHTS trains
them all). The table has one row group per teacher: "teacher" for one, "teacher 1", "teacher
2", ... for several. With KD.EMA.ENABLED and no KD.MODEL_CONFIG (self-distillation) there is
no teacher to evaluate. With ``compare_without_kd`` the same student is also trained without
distillation, so the table shows what KD bought.

Independent branches run concurrently through the flow's task runner (``run_distill``'s
``max_parallel``, default 2): the teachers (those sharing an OUTPUT_DIR one after the other),
then the KD student beside the no-KD student. Each branch keeps its MLflow run under the flow's
parent run, as before; trainings on a GPU still take turns per GPU (``tasks/gpu_slots.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import prefect_run_tags, publish_results, result_rows
from flows.pipeline import run_stages
from reid.config import CfgNode, load_config, merge_overrides, validate
from reid.errors import ReidError
from reid.modeling.meta_arch.teachers import paths_override, teacher_paths
from reid.utils.run_lock import hold_output_dir
from tasks import lineage
from tasks.offline import is_uri, output_dir_tags
from tasks.pipeline_tasks import evaluate_task
from tasks.tracking import Tracker


def _changed(cfg: CfgNode, *overrides: str) -> CfgNode:
    """A frozen copy of ``cfg`` with ``KEY VALUE`` overrides, checked like the command line's
    (types, then the ranges and names ``validate`` checks)."""
    changed = merge_overrides(cfg.clone(), overrides)
    validate(changed)
    return changed.freeze()


def teacher_checkpoint(config: str, weights: str, role: str, tracker: Tracker,
                       parent: str, nproc_per_node: int = 1, use_cache: bool = True
                       ) -> tuple[str, dict]:
    """One teacher's weights and its results: evaluated if they exist (a file, or a model URI
    resolved through MLflow: ``tasks/lineage.py``), else trained first."""
    teacher_cfg = load_config(config)
    with tracker.run(role, parent, tags={"reid.role": "teacher"}) as run:
        tracker.log_config(run, teacher_cfg, config)
        if is_uri(weights):  # the student's config keeps the URI: its runs resolve it
            found = lineage.resolve(weights, "KD.MODEL_WEIGHTS", tracker.client)
            tracker.set_tags(run, lineage.lineage_tags(lineage.TEACHER_PREFIX, [found]))
            results = evaluate_task(teacher_cfg, tracker, run, weights=str(found.file))["results"]
        elif weights and Path(weights).is_file():
            results = evaluate_task(teacher_cfg, tracker, run, weights=weights)["results"]
        else:
            out = run_stages(teacher_cfg, tracker, run, nproc_per_node=nproc_per_node,
                             use_cache=use_cache)
            weights, results = out["checkpoint"], out["results"]
        tracker.log_results(run, results)
    return weights, results


@task(name="distill-branch", cache_policy=NO_CACHE)
def branch(work: Callable[..., dict], *args) -> dict:
    """An independent part of the flow (a teacher, a student), run by the flow's task runner
    beside the others; GPU trainings still take turns (``tasks/gpu_slots.py``)."""
    return work(*args)


def in_parallel(calls: list[tuple]) -> list[dict]:
    """``[work(*args), ...]`` of ``calls = [(work, *args), ...]`` as concurrent branches; all
    are waited for before the first failure is raised (no branch outlives the flow's run)."""
    futures = [branch.submit(*call) for call in calls]
    wait(futures)
    return [future.result() for future in futures]


def _teacher_group(group: list[tuple[str, str, str]], tracker: Tracker, parent: str,
                   nproc_per_node: int, use_cache: bool) -> dict:
    """Teachers sharing an OUTPUT_DIR, one after the other (one training per folder)."""
    return {role: teacher_checkpoint(config, weights, role, tracker, parent, nproc_per_node,
                                     use_cache) for role, config, weights in group}


def teacher_checkpoints(cfg: CfgNode, tracker: Tracker, parent: str,
                        nproc_per_node: int = 1, use_cache: bool = True
                        ) -> dict[str, tuple[str, dict]]:
    """``{role: (weights, results)}`` for every teacher of KD.MODEL_CONFIG, in order; teachers
    with different OUTPUT_DIRs are evaluated or trained concurrently."""
    paths = teacher_paths(cfg, require_weights=False)
    if not paths and not cfg.KD.EMA.ENABLED:
        raise ReidError("the student recipe must name its teacher's config in KD.MODEL_CONFIG "
                        "(or set KD.EMA.ENABLED for self-distillation)")
    roles = ["teacher"] if len(paths) == 1 else [f"teacher {i}" for i in range(1, len(paths) + 1)]
    groups: dict[Path, list] = {}
    for role, (config, weights) in zip(roles, paths):
        folder = Path(load_config(config).OUTPUT_DIR).resolve()
        groups.setdefault(folder, []).append((role, config, weights))
    found = {}
    for done in in_parallel([(_teacher_group, group, tracker, parent, nproc_per_node,
                              use_cache) for group in groups.values()]):
        found.update(done)
    return {role: found[role] for role in roles}


def _student(role: str, role_cfg: CfgNode, stage: str, register: Optional[str], config: str,
             tracker: Tracker, parent: str, nproc_per_node: int, use_cache: bool) -> dict:
    """One student (with KD, or the same model without) in its role run under ``parent``."""
    _, teacher_tags = lineage.resolve_config(role_cfg, tracker.client.tracking_uri)
    with tracker.run(role, parent, tags={"reid.role": role, **teacher_tags}) as run:
        tracker.log_config(run, role_cfg, config)
        out = run_stages(role_cfg, tracker, run, train_stage=stage, register=register,
                         nproc_per_node=nproc_per_node, use_cache=use_cache)
        tracker.log_results(run, out["results"])
    return out


@flow(name="reid-distill", task_runner=ThreadPoolTaskRunner(max_workers=2))
def distill(config: str, overrides: Optional[list[str]] = None,
            compare_without_kd: bool = True, nproc_per_node: int = 1,
            register_model: Optional[str] = None, use_cache: bool = True) -> dict:
    """Teachers (trained unless their weights exist) -> student with KD (-> the same student
    without KD, for comparison); ``nproc_per_node`` > 1 trains each with DDP;
    ``register_model`` names the registered model the KD student becomes a version of;
    ``use_cache`` false recomputes stages an earlier run could lend their outputs to."""
    cfg = load_config(config, overrides or [])
    with hold_output_dir(cfg.OUTPUT_DIR):
        tracker = Tracker()
        tracker.close_abandoned(cfg.OUTPUT_DIR)
        return _distill(cfg, config, tracker, compare_without_kd, nproc_per_node,
                        register_model, use_cache)


def _distill(cfg: CfgNode, config: str, tracker: Tracker, compare_without_kd: bool,
             nproc_per_node: int, register_model: Optional[str] = None,
             use_cache: bool = True) -> dict:
    rows = []
    tags = {"reid.flow": "distill", **output_dir_tags(cfg), **prefect_run_tags()}
    with tracker.run(f"distill:{Path(config).stem}", tags=tags) as parent:
        teachers = teacher_checkpoints(cfg, tracker, parent, nproc_per_node, use_cache)
        tracker.log_dataset(parent, cfg)  # after the teachers' prepare stages made the data
        results = {role: teacher_results for role, (_, teacher_results) in teachers.items()}
        for role, teacher_results in results.items():
            rows += result_rows(role, teacher_results)
        student_cfg = cfg
        if teachers:
            checkpoints = [weights for weights, _ in teachers.values()]
            student_cfg = _changed(cfg, "KD.MODEL_WEIGHTS", paths_override(checkpoints))
        runs = {"student (KD)": (student_cfg, "distill", register_model)}
        if compare_without_kd:
            plain = _changed(cfg, "MODEL.META_ARCHITECTURE", "Baseline",
                             "OUTPUT_DIR", str(Path(cfg.OUTPUT_DIR) / "no-kd"))
            runs["student (no KD)"] = (plain, "train", None)
        students = in_parallel([(_student, role, role_cfg, stage, register, config, tracker,
                                 parent, nproc_per_node, use_cache)
                                for role, (role_cfg, stage, register) in runs.items()])
        for role, out in zip(runs, students):
            results[role] = out["results"]
            rows += result_rows(role, out["results"])
        publish_results(rows, "reid-distill-results", f"{config}: teachers vs student (percent)")
    return {"results": results, "mlflow_run_id": parent}


def run_distill(config: str, max_parallel: int = 2, **parameters) -> dict:
    """The distill flow with at most ``max_parallel`` branches (teachers, students) at once."""
    if max_parallel < 1:
        raise ReidError(f"--max-parallel must be at least 1, got {max_parallel}")
    runner = ThreadPoolTaskRunner(max_workers=max_parallel)
    return distill.with_options(task_runner=runner)(config=config, **parameters)
