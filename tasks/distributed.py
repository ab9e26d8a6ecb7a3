"""Distributed training from a flow: ``torchrun`` workers running the CLI's train stage.

A Prefect task cannot become N ranks itself, so with ``nproc_per_node > 1`` the train task
launches ``python -m torch.distributed.run --standalone --nproc_per_node N -m reid.cli train``
on the flow's own config (written to a temporary YAML file) and waits. Rank 0 logs the nested
MLflow stage run under the flow's parent run (REID_PARENT_RUN_ID), exactly as the in-process
task does; DDP runs over NCCL on GPUs and gloo on CPUs (``reid.engine.launch``).

The workers' stderr is passed through; a user error they report (``reid: error: ...``, e.g.
a diverged training) is raised here as a ``ReidError`` with that line, so the task is not
retried; any other failure (a lost worker, NCCL, workers stopped by a signal after writing a
checkpoint: ``reid: stopped: ...``) is a ``RuntimeError`` that Prefect may retry, resuming
from the last checkpoint. When this process itself is interrupted it passes the signal on to
torchrun, which passes it to the workers, and waits for them to write their checkpoint.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from reid import stages
from reid.config import CfgNode, load_config, save_config
from reid.errors import STOPPED_PREFIX, USER_ERROR_PREFIX, ReidError
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
    env.update(SIGNALS_ENV)
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
        returncode, user_error, stopped = _run(launch_command(config_file, nproc_per_node,
                                                              stage, resume), env)
    out = Path(cfg.OUTPUT_DIR)
    if user_error:
        raise ReidError(user_error)
    if stopped:
        raise RuntimeError(f"distributed training stopped by a signal ({stopped}); a retry "
                           "resumes from that checkpoint")
    if returncode != 0:
        raise RuntimeError(f"distributed training ({nproc_per_node} processes) failed with exit "
                           f"code {returncode}; its log: {out / LOG_FILE}")
    final = out / stages.FINAL_CHECKPOINT
    if not final.is_file():
        raise RuntimeError(f"distributed training ended without writing {final}")
    saved = load_config(str(out / "config.yaml"), [])
    return {"checkpoint": str(final), "num_classes": int(saved.MODEL.HEADS.NUM_CLASSES),
            "config": str(out / "config.yaml")}


# torchrun's agent passes these on to its workers (its default list lacks SIGUSR1, Slurm's
# warning signal, which would otherwise kill the agent outright).
SIGNALS_ENV = {"TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
# How long an interrupted launch waits for the workers to write their checkpoint (torchrun
# itself gives them 30 s before SIGKILL).
STOP_GRACE_S = 60


def _run(command: list[str], env: dict) -> tuple[int, str | None, str | None]:
    """Run ``command`` passing its stderr through; returns its exit code, the first user error
    line a worker printed and the first "stopped" line (both without their prefix), if any."""
    user_error = stopped = None
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True,
                          errors="replace") as proc:
        try:
            for line in proc.stderr:
                sys.stderr.write(line)
                if user_error is None and line.startswith(USER_ERROR_PREFIX):
                    user_error = line[len(USER_ERROR_PREFIX):].strip()
                if stopped is None and line.startswith(STOPPED_PREFIX):
                    stopped = line[len(STOPPED_PREFIX):].strip()
        except BaseException:  # interrupted (SIGTERM, Ctrl-C): torchrun stops its workers,
            proc.terminate()   # which write a checkpoint first; wait for it
            try:
                _, rest = proc.communicate(timeout=STOP_GRACE_S)  # drained: none blocks
                sys.stderr.write(rest or "")
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return proc.returncode, user_error, stopped
