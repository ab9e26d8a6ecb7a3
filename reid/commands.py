"""The stage commands of ``reid`` (one per entry of the stage table, ``reid.stages.STAGES``)
and what every command shares: logging, the recipe, the config, the results table.

Part of the composition root with ``reid/cli.py``: a stage command calls the stage's tracked
adapter (``tasks/``, imported lazily) with an MLflow ``Tracker``, or with a ``NullTracker``
for ``--no-track`` and ranks other than 0, so both paths are the same call.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from reid.elastic_launch import TORCHRUN_OPTIONS, Launch, run_torchrun
from reid.errors import ReidError, Terminated
from reid.utils.logger import ColorfulFormatter, wants_colour
from reid.utils.logs import LOG_FORMAT, attach_log_file
from reid.utils.run_lock import INHERITED_ENV, hold_output_dir, inherit_env

logger = logging.getLogger("reid")
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "params" / "synthetic.yml"
QUIET_LOGGERS = ("alembic", "mlflow", "httpx", "httpcore", "prefect", "urllib3", "PIL",
                 "matplotlib")


# --------------------------------------------------------------------------- shared
def setup_logging(output_dir: str | None = None) -> None:
    """Console logging at INFO; with ``output_dir``, also its log.txt for the whole command
    (the stage functions write there too, see ``reid.utils.logs``)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop_reported_user_errors)
        if wants_colour(getattr(handler, "stream", None)):  # a terminal: colours
            handler.setFormatter(ColorfulFormatter(LOG_FORMAT, "%H:%M:%S"))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if output_dir:
        attach_log_file(output_dir)


def drop_reported_user_errors(record: logging.LogRecord) -> bool:
    """Console filter: Prefect logs a failed task's or flow's exception (with its traceback)
    several times over; a ReidError is printed once, as the command's last line, instead.
    The records still reach the Prefect server's run logs."""
    if not record.name.startswith("prefect"):
        return True
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, ReidError) and "ReidError" not in record.getMessage()


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def install_stop_handlers() -> None:
    """The command's handlers of SIGTERM, SIGINT and SIGUSR1 (main thread only)."""
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), stop_or_raise)


def stop_or_raise(signum, frame) -> None:
    """A running training stops at the end of its step with a checkpoint
    (``reid.engine.preemption``, also when it runs in a Prefect task's thread); anything else
    unwinds at once: KeyboardInterrupt for Ctrl-C, ``Terminated`` for the others."""
    preemption = sys.modules.get("reid.engine.preemption")  # not imported: no training
    if preemption is not None and preemption.request_stop(signum):
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum=signum)


def recipe(path: str | None) -> str:
    if path:
        return path
    if not DEFAULT_RECIPE.is_file():
        raise ReidError(f"no --config given and the default recipe {DEFAULT_RECIPE} is missing")
    return str(DEFAULT_RECIPE)


def load(args: argparse.Namespace):
    from reid.config import load_config
    cfg = load_config(recipe(args.config), args.opts)
    setup_logging(cfg.OUTPUT_DIR)
    return cfg


def print_results(results: dict) -> None:
    keys = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")
    print(f"{'test set':<24}" + "".join(f"{k:>9}" for k in keys))
    for name, metrics in results.items():
        print(f"{name:<24}" + "".join(f"{metrics[k]:9.2f}" for k in keys))


def default_weights(cfg, *names: str) -> str:
    for name in names:
        if (Path(cfg.OUTPUT_DIR) / name).is_file():
            return str(Path(cfg.OUTPUT_DIR) / name)
    raise ReidError(f"no --weights given and none of {', '.join(names)} exists in {cfg.OUTPUT_DIR}")


# --------------------------------------------------------------------------- stage commands
# The command-line option of each stage input: (flags, argparse keywords).
INPUT_OPTIONS: dict[str, tuple[str, dict]] = {
    "weights": ("--weights", {"help": "checkpoint to load (default: from OUTPUT_DIR)"}),
    "resume": ("--resume", {"action": "store_true", "help": "resume from OUTPUT_DIR"}),
    "register": ("--register", {"metavar": "NAME", "help": "register the weights in the MLflow "
                                "model registry as a version of NAME (alias candidate; champion "
                                "when its mAP beats the champion's)"}),
    # Checked by stage_inputs: argparse's "required" fires before options written after the
    # overrides are taken back from them.
    "output": ("--output", {"help": "output file, e.g. model.onnx (required)"}),
    "format": ("--format", {"default": "onnx", "help": "export format (default: onnx)"}),
    "exporter": ("--exporter", {"default": "dynamo", "help": "ONNX exporter: dynamo (default, "
                                "torch.export) or torchscript (legacy tracer)"}),
}


def add_stage_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``reid <stage.command>`` for every stage of the table; ``command(name, fn, help,
    aliases)`` makes a subparser with --config and the overrides."""
    from reid.stage_table import STAGES
    for stage in STAGES.values():
        parser = command(stage.command, cmd_stage, stage.help, aliases=stage.aliases)
        for name in stage.inputs:
            flag, keywords = INPUT_OPTIONS[name]
            parser.add_argument(flag, **keywords)
        parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
        if "resume" in stage.inputs:  # the training stages: torchrun's options, its names
            add_torchrun_options(parser)
        parser.set_defaults(stage=stage)


def add_torchrun_options(parser: argparse.ArgumentParser) -> None:
    """torchrun's launch options (``reid.elastic_launch``); giving any runs the command as
    torchrun's workers."""
    group = parser.add_argument_group("distributed launch (torchrun's options)")
    for option, keywords in TORCHRUN_OPTIONS.items():
        group.add_argument(option, **keywords)


def check_options(args: argparse.Namespace, stage) -> None:
    """Options that cannot work, refused before anything is loaded."""
    if "output" in stage.inputs and not args.output:
        raise ReidError(f"reid {stage.command} needs --output FILE (e.g. model.onnx)")
    if "register" in stage.inputs and args.register and args.no_track:
        raise ReidError(f"reid {stage.command} --register needs MLflow: drop --no-track")


def stage_inputs(args: argparse.Namespace, stage, cfg) -> dict:
    """The stage's inputs from the command line (weights found in OUTPUT_DIR by default)."""
    inputs = {name: getattr(args, name) for name in stage.inputs}
    if "weights" in inputs and not inputs["weights"]:
        inputs["weights"] = default_weights(cfg, *stage.default_weights)
    return inputs


def cmd_stage(args: argparse.Namespace) -> None:
    """One stage, holding OUTPUT_DIR, through its tracked adapter: an MLflow run nested under
    REID_PARENT_RUN_ID when set (to group DVC's stage processes), or no tracking at all with
    --no-track and on ranks other than 0 (RANK is set by torchrun before the process group)."""
    stage = args.stage
    check_options(args, stage)
    launch = Launch.from_args(args)  # checked before anything loads
    cfg = load(args)
    if launch is not None:
        return launch_workers(args, stage, cfg, launch)
    inputs = stage_inputs(args, stage, cfg)
    with hold_output_dir(cfg.OUTPUT_DIR):
        tracker, parent = _tracker(args, cfg)
        out = stage.adapter()(stage, cfg, tracker, parent, **inputs)
    SHOW.get(stage.name, lambda out: None)(out)


def launch_workers(args: argparse.Namespace, stage, cfg, launch: Launch) -> None:
    """This machine's torchrun agent, whose workers run the same command without the launch
    options (rank 0 tracks). On one machine this process holds OUTPUT_DIR for its workers;
    across machines the workers' rank 0 does (OUTPUT_DIR must then be a shared folder)."""
    command = ["reid.cli", stage.command, "--config", recipe(args.config), *args.opts]
    command += ["--resume"] * bool(args.resume) + ["--no-track"] * bool(args.no_track)
    env = dict(os.environ)
    holding = contextlib.nullcontext() if launch.multi_node else hold_output_dir(cfg.OUTPUT_DIR)
    with holding:
        if not launch.multi_node:
            env.update(inherit_env(cfg.OUTPUT_DIR))
        outcome = run_torchrun(launch.command(command), env)
    outcome.raise_for_workers()
    if outcome.returncode != 0:
        logger.error("torchrun failed with exit code %d (its report above); log: %s",
                     outcome.returncode, Path(cfg.OUTPUT_DIR) / "log.txt")
        raise SystemExit(outcome.returncode)


def _tracker(args: argparse.Namespace, cfg):
    """(tracker, parent run id) for a stage command."""
    if args.no_track or int(os.environ.get("RANK", "0")) != 0:
        from tasks.offline import NullTracker  # no MLflow import (tasks/offline.py)
        return NullTracker(), None
    from tasks.tracking import PARENT_RUN_ENV, Tracker
    tracker, parent = Tracker(), os.environ.get(PARENT_RUN_ENV) or None
    if not os.environ.get(INHERITED_ENV):  # the lock's owner: no live run of ours there
        tracker.close_abandoned(cfg.OUTPUT_DIR, keep=(parent,))
    return tracker, parent


def _show_datasets(out: dict) -> None:
    for name, splits in out["datasets"].items():
        logger.info("%s: %s", name, splits)


def _show_evaluation(out: dict) -> None:
    print_results(out["results"])
    if out.get("registered"):
        reg = out["registered"]
        print(f"\nregistered {reg['name']} version {reg['version']} as "
              f"{' and '.join(reg['aliases'])} ({reg['reason']})")


def _show_export(out: dict) -> None:
    cosine = ", ".join(f"batch {b}: {c:.6f}" for b, c in out["cosine"].items())
    print(f"wrote {out['output']} ({out['format']}, {out['exporter']} exporter; onnxruntime vs "
          f"PyTorch cosine {cosine})")


# What each stage command prints when it is done (a stage without an entry prints nothing).
SHOW: dict[str, Callable[[dict], None]] = {
    "prepare": _show_datasets,
    "train": lambda out: logger.info("final checkpoint: %s", out["checkpoint"]),
    "distill": lambda out: logger.info("final checkpoint: %s", out["checkpoint"]),
    "precise_bn": lambda out: logger.info("checkpoint: %s", out["checkpoint"]),
    "evaluate": _show_evaluation,
    "export": _show_export,
}
