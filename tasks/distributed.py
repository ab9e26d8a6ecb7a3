"""Distributed training from a flow: ``torchrun`` workers running the CLI's train stage.

A Prefect task cannot become N ranks itself, so with ``nproc_per_node > 1`` the train task
launches ``python -m torch.distributed.run --standalone --nproc_per_node N -m reid.cli train``
on the flow's own config (written to a temporary YAML file) and waits. Rank 0 logs the nested
MLflow stage run under the flow's parent run (REID_PARENT_RUN_ID), exactly as the in-process
task does; DDP runs over NCCL on GPUs and gloo on CPUs (``reid.engine.launch``).

The workers' stderr is passed through (``reid.elastic_launch.run_torchrun``); a user error
they report (``reid: error: ...``, e.g.
a diverged training) is raised here as a ``ReidError`` with that line, so the task is not
retried; any other failure (a lost worker, NCCL, workers stopped by a signal after writing a
checkpoint: ``reid: stopped: ...``) is a ``RuntimeError`` that Prefect may retry, resuming
from the last checkpoint. When this process itself is interrupted it passes the signal on to
torchrun, which passes it to the workers, and waits for them to write their checkpoint.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from reid import stages
from reid.config import CfgNode, load_config, save_config
from reid.elastic_launch import run_torchrun
from reid.errors import ReidError
from reid.utils.logs import LOG_FILE
from reid.utils.run_lock import hold_output_dir, inherit_env
from tasks.tracking import PARENT_RUN_ENV


def check_process_count(cfg: CfgNode, nproc_per_node: int) -> None:
    """One line when the count cannot work: below 1, or more processes than visible GPUs."""
    if nproc_per_node < 1:
        raise ReidError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    import torch
    if str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if nproc_per_node > gpus:
            raise ReidError(f"nproc_per_node {nproc_per_node} but {gpus} GPU(s) visible: one "
                            "process per GPU (or MODEL.DEVICE cpu for CPU processes)")


def launch_command(config_file: str | Path, nproc_per_node: int, stage: str = "train",
                   resume: bool = False) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc_per_node}", "-m", "reid.cli", stage,
               "--config", str(config_file)]
    return command + (["--resume"] if resume else [])


def train(cfg: CfgNode, nproc_per_node: int, tracking_uri: str | None,
          parent_id: str | None = None, resume: bool = False, stage: str = "train") -> dict:
    """Train ``cfg`` on ``nproc_per_node`` local processes; returns what ``stages.train``
    returns (read back from OUTPUT_DIR)."""
    check_process_count(cfg, nproc_per_node)
    env = dict(os.environ)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if parent_id:
        env[PARENT_RUN_ENV] = parent_id
    else:
        env.pop(PARENT_RUN_ENV, None)
    # The workers write OUTPUT_DIR under this process's hold on it (reid.utils.run_lock).
    with hold_output_dir(cfg.OUTPUT_DIR), \
            tempfile.TemporaryDirectory(prefix="reid-launch-") as folder:
        env.update(inherit_env(cfg.OUTPUT_DIR))
        config_file = Path(folder) / "config.yaml"
        save_config(cfg, config_file)
        outcome = run_torchrun(launch_command(config_file, nproc_per_node, stage, resume), env)
    out = Path(cfg.OUTPUT_DIR)
    if outcome.user_error:
        raise ReidError(outcome.user_error)
    if outcome.interrupted is not None:  # this process was interrupted: unwind as it was
        raise outcome.interrupted
    if outcome.stopped:
        raise RuntimeError(f"distributed training stopped by a signal ({outcome.stopped}); a "
                           "retry resumes from that checkpoint")
    returncode = outcome.returncode
    if returncode != 0:
        raise RuntimeError(f"distributed training ({nproc_per_node} processes) failed with exit "
                           f"code {returncode}; its log: {out / LOG_FILE}")
    final = out / stages.FINAL_CHECKPOINT
    if not final.is_file():
        raise RuntimeError(f"distributed training ended without writing {final}")
    saved = load_config(str(out / "config.yaml"), [])
    return {"checkpoint": str(final), "num_classes": int(saved.MODEL.HEADS.NUM_CLASSES),
            "config": str(out / "config.yaml")}
