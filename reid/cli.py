"""The ``reid`` command.

``reid run`` runs a Prefect flow; ``reid prepare|train|precise-bn|eval|distill|extract`` run one
stage (what DVC's stages call), logging to MLflow unless ``--no-track``. This module is the
composition root: it is the only one in ``reid/`` that imports ``tasks``/``flows``, lazily,
inside the commands that need orchestration or tracking.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from reid.errors import ReidError, one_line

logger = logging.getLogger("reid")
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "params" / "synthetic.yml"
PARENT_RUN_ENV = "REID_PARENT_RUN_ID"
QUIET_LOGGERS = ("alembic", "mlflow", "httpx", "httpcore", "prefect", "urllib3", "PIL", "matplotlib")


def setup_logging(output_dir: str | None = None) -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S", force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(output_dir) / "log.txt")
        handler.setFormatter(logging.Formatter(fmt))
        logging.getLogger().addHandler(handler)


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


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> None:
    from flows.distill import distill
    from flows.pipeline import pipeline
    if args.flow == "distill":
        if not args.config:
            raise ReidError("reid run --flow distill needs --config (a student recipe with KD.*), "
                            "e.g. params/kd-synthetic.yml")
        out = distill(config=args.config, overrides=list(args.opts),
                      compare_without_kd=not args.no_compare)
        for role, results in out["results"].items():
            print(f"\n{role}:")
            print_results(results)
    else:
        out = pipeline(config=recipe(args.config), overrides=list(args.opts), resume=args.resume)
        print_results(out["results"])
    print(f"\nMLflow run {out['mlflow_run_id']} (mlflow ui --backend-store-uri "
          f"$MLFLOW_TRACKING_URI to browse)")


def _stage(args: argparse.Namespace, untracked: Callable, tracked: Callable) -> dict:
    """Run one stage: ``untracked()``, or ``tracked(tasks.tracked, Tracker(), parent)`` in an
    MLflow run, nested under REID_PARENT_RUN_ID when set (to group DVC's stage processes).

    Under torchrun only rank 0 (RANK, set before the process group exists) talks to MLflow.
    """
    if args.no_track or int(os.environ.get("RANK", "0")) != 0:
        return untracked()
    from tasks import tracked as tracked_stages
    from tasks.tracking import Tracker
    return tracked(tracked_stages, Tracker(), os.environ.get(PARENT_RUN_ENV) or None)


def cmd_prepare(args):
    from reid import stages
    cfg = load(args)
    out = _stage(args, lambda: stages.prepare(cfg),
                 lambda ts, t, parent: ts.prepare(cfg, t, parent))
    for name, splits in out["datasets"].items():
        logger.info("%s: %s", name, splits)


def cmd_train(args, stage: str = "train"):
    from reid import stages
    cfg = load(args)
    fn = stages.distill if stage == "distill" else stages.train
    out = _stage(args, lambda: fn(cfg, resume=args.resume),
                 lambda ts, t, parent: ts.train(cfg, t, parent, resume=args.resume, stage=stage))
    logger.info("final checkpoint: %s", out["checkpoint"])


def cmd_distill(args):
    cmd_train(args, stage="distill")


def default_weights(cfg, *names: str) -> str:
    for name in names:
        if (Path(cfg.OUTPUT_DIR) / name).is_file():
            return str(Path(cfg.OUTPUT_DIR) / name)
    raise ReidError(f"no --weights given and none of {', '.join(names)} exists in {cfg.OUTPUT_DIR}")


def cmd_precise_bn(args):
    from reid import stages
    cfg = load(args)
    weights = args.weights or default_weights(cfg, stages.FINAL_CHECKPOINT)
    out = _stage(args, lambda: stages.precise_bn(cfg, weights),
                 lambda ts, t, parent: ts.precise_bn(cfg, weights, t, parent))
    logger.info("checkpoint: %s", out["checkpoint"])


def cmd_eval(args):
    from reid import stages
    cfg = load(args)
    weights = args.weights or default_weights(cfg, stages.PRECISE_BN_CHECKPOINT,
                                              stages.FINAL_CHECKPOINT)
    out = _stage(args, lambda: stages.evaluate(cfg, weights),
                 lambda ts, t, parent: ts.evaluate(cfg, weights, t, parent))
    print_results(out["results"])


def cmd_extract(args):
    from reid import stages
    if not args.output:
        raise ReidError("reid extract needs --output FILE.npz (where to write the features)")
    cfg = load(args)
    weights = args.weights or default_weights(cfg, stages.PRECISE_BN_CHECKPOINT,
                                              stages.FINAL_CHECKPOINT)
    out = stages.extract(cfg, weights, args.dataset or cfg.DATASETS.TESTS[0], args.output)
    logger.info("wrote %d features of dimension %d to %s", out["count"], out["dim"],
                out["features"])


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable, help: str, weights: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", help="YAML recipe (default: params/synthetic.yml)")
        if weights:
            p.add_argument("--weights", help="checkpoint to load (default: from OUTPUT_DIR)")
        p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                       help="config overrides, e.g. SOLVER.MAX_EPOCH 5")
        p.set_defaults(fn=fn, command_parser=p)
        return p

    run = command("run", cmd_run, "run a Prefect flow (default: the whole pipeline)")
    run.add_argument("--flow", choices=("pipeline", "distill"), default="pipeline")
    run.add_argument("--resume", action="store_true", help="resume training from OUTPUT_DIR")
    run.add_argument("--no-compare", action="store_true",
                     help="distill flow: skip the student trained without KD")
    stage_commands = [
        command("prepare", cmd_prepare, "check the datasets; generate the synthetic one"),
        command("train", cmd_train, "train a model"),
        command("distill", cmd_distill, "train a student with knowledge distillation"),
        command("precise-bn", cmd_precise_bn, "recompute BatchNorm statistics", weights=True),
        command("eval", cmd_eval, "evaluate on DATASETS.TESTS; writes results.json", weights=True),
    ]
    for p in stage_commands:
        p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    for p in stage_commands[1:3]:
        p.add_argument("--resume", action="store_true", help="resume from OUTPUT_DIR")
    extract = command("extract", cmd_extract, "write a test set's features to .npz", weights=True)
    extract.add_argument("--dataset", help="test set name (default: the first of DATASETS.TESTS)")
    # Checked in cmd_extract: argparse's "required" fires before options written after the
    # overrides are taken back from them.
    extract.add_argument("--output", help="output .npz file (required)")
    return parser


def split_options(parser: argparse.ArgumentParser, tokens: list[str]) -> tuple[list, list]:
    """(KEY VALUE overrides, the command's own options): argparse's REMAINDER also swallows
    options written after the overrides (``reid extract KEY VALUE --output f.npz``)."""
    overrides, options = [], []
    tokens = iter(tokens)
    for token in tokens:
        action = parser._option_string_actions.get(token)
        if action is None:
            overrides.append(token)
            continue
        options.append(token)
        if action.nargs != 0:  # store_true flags take no value
            options.append(next(tokens, ""))
    return overrides, options


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides, options = split_options(args.command_parser, args.opts)
    args.command_parser.parse_args(options, namespace=args)  # resets args.opts: set it after
    args.opts = overrides
    setup_logging()
    try:
        args.fn(args)
    except ReidError as exc:
        print(f"reid: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reid: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
