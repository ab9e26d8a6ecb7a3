"""The ``reid`` command.

``reid run`` runs a Prefect flow; ``reid serve`` serves prefect.yaml's scheduled deployments;
``reid prepare|train|distill|precise-bn|evaluate|export`` run one stage of the stage table
(what DVC's stages call; ``reid/commands.py``), logging to MLflow unless ``--no-track``;
``reid extract``, ``info``, ``compare`` and ``gc`` are tools around them. This module and
``reid/commands.py`` are the composition root: the only ones in ``reid/`` that import
``tasks``/``flows``, lazily, inside the commands that need orchestration or tracking.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from reid.commands import (add_stage_commands, default_weights, install_stop_handlers, load,
                           print_results, recipe, setup_logging)
from reid.errors import (STOPPED_PREFIX, USER_ERROR_PREFIX, Preempted, ReidError, Terminated,
                         describe_os_error, one_line)
from reid.retrieval.commands import Hooks, add_retrieval_commands
from reid.elastic_launch import add_refused_torchrun_options, refuse_multi_machine, stop_the_job
from reid.stage_table import BEST_WEIGHTS
from reid.utils.run_lock import hold_output_dir
from reid.visual_commands import add_visual_commands

logger = logging.getLogger("reid")


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> None:
    """Checks what can fail in seconds (the config, OUTPUT_DIR free, the tracking server)
    before the flow starts Prefect's temporary server, then runs the flow."""
    from reid.config import load_config
    refuse_multi_machine(args)
    if args.flow == "distill" and not args.config:
        raise ReidError("reid run --flow distill needs --config (a student recipe with KD.*), "
                        "e.g. params/kd-synthetic.yml")
    cfg = load_config(recipe(args.config), args.opts)
    with hold_output_dir(cfg.OUTPUT_DIR):
        from tasks.tracking import check_server  # sets the embedded store's URI by default
        check_server(os.environ["MLFLOW_TRACKING_URI"])
        _run_flow(args)


def _run_flow(args: argparse.Namespace) -> None:
    from flows.distill import run_distill
    from flows.pipeline import pipeline
    if args.flow == "distill":
        out = run_distill(args.config, max_parallel=args.max_parallel, overrides=list(args.opts),
                      compare_without_kd=not args.no_compare,
                      nproc_per_node=args.nproc_per_node, register_model=args.register,
                      use_cache=not args.no_cache)
        for role, results in out["results"].items():
            print(f"\n{role}:")
            print_results(results)
    else:
        out = pipeline(config=recipe(args.config), overrides=list(args.opts), resume=args.resume,
                       register_model=args.register, nproc_per_node=args.nproc_per_node,
                       use_cache=not args.no_cache)
        print_results(out["results"])
        print(f"\noutputs in {out['output_dir']} (log.txt, metrics.json, results.json, "
              "checkpoints, visual/)")
    print_run_link("MLflow run", out["mlflow_run_id"])


def print_run_link(what: str, run_id: str) -> None:
    from tasks.tracking import ui_link
    print(f"\n{what} {run_id}: {ui_link(run_id)}")


def cmd_sweep(args: argparse.Namespace) -> None:
    """One pipeline run per point of --grid: here (--max-parallel at a time) or on the
    workers of --work-pool; a summary of every point, and which failed and why."""
    from flows.sweep import run_sweep
    if not args.grid:
        raise ReidError("reid sweep needs --grid FILE.yml (config keys -> lists of values "
                        "and/or a list of override sets; e.g. params/sweeps/synthetic-lr.yml)")
    out = run_sweep(config=recipe(args.config), grid=args.grid, overrides=list(args.opts),
                    max_parallel=args.max_parallel, work_pool=args.work_pool,
                    deployment=args.deployment, use_cache=not args.no_cache)
    print(out["markdown"])
    print_run_link("MLflow sweep run (its comparison under sweep/)", out["mlflow_run_id"])
    if out["failed"]:
        raise ReidError(f"{len(out['failed'])} of {len(out['outcomes'])} sweep points failed: "
                        + "; ".join(f"{f['point']}: {f['error']}" for f in out["failed"]))


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve prefect.yaml's deployments (their schedules) until interrupted."""
    from flows.serve import serve_prefect_file
    logging.getLogger("prefect").setLevel(logging.INFO)  # show the runner's submissions
    serve_prefect_file(args.prefect_file, only=args.only, limit=args.limit or None)


def cmd_extract(args):
    """Features of a test set (--dataset, the default) or of an image folder (--input)."""
    from reid import stages
    if not args.output:
        raise ReidError("reid extract needs --output FILE.npz (where to write the features)")
    if args.input and args.dataset:
        raise ReidError("reid extract takes --input DIR (an image folder) or --dataset NAME "
                        "(a test set), not both")
    cfg = load(args)
    weights = args.weights or default_weights(cfg, *BEST_WEIGHTS)
    if args.input:
        out = stages.extract_folder(cfg, weights, args.input, args.output)
    else:
        out = stages.extract(cfg, weights, args.dataset or cfg.DATASETS.TESTS[0], args.output)
    logger.info("wrote %d features of dimension %d to %s", out["count"], out["dim"],
                out["features"])


def cmd_info(args):
    if args.env:
        from reid.utils.collect_env import collect_env_info
        print(collect_env_info(), end="")
        return
    from reid.config import load_config
    from reid.model_info import ACTIVATIONS_NOTE, FLOPS_NOTE, describe_model
    info = describe_model(load_config(recipe(args.config), args.opts))
    height, width = info.input_size
    rows = [
        ("meta-architecture", info.meta_architecture),
        ("backbone", info.backbone),
        ("head", info.head),
        ("parameters", f"{info.parameters:,} (trainable {info.trainable_parameters:,})"),
        ("FLOPs", f"{info.flops:,} at {height}x{width} ({FLOPS_NOTE})"),
        ("GFLOPs", f"{info.gflops:.3f}"),
        ("activations", f"{info.activations:,} ({ACTIVATIONS_NOTE})"),
        ("feature size", str(info.feature_dim)),
    ]
    for name, value in rows:
        print(f"{name:<18} {value}")


def cmd_visualize(args):
    """Rank lists of the queries named by --query (indices or file names) of a test set."""
    from pathlib import Path

    from reid.utils.visualizer import rank_lists
    cfg = load(args)
    weights = args.weights or default_weights(cfg, *BEST_WEIGHTS)
    output = args.output or str(Path(cfg.OUTPUT_DIR) / "visual" / "rank_lists.png")
    out = rank_lists(cfg, weights, args.query or [], output, dataset=args.dataset,
                     max_rank=args.max_rank)
    print(f"wrote the rank lists of queries {', '.join(map(str, out['queries']))} to "
          f"{out['output']}")


def cmd_compare(args):
    from tasks.compare import compare
    if args.max_runs < 1:
        raise ReidError(f"--max-runs must be at least 1, got {args.max_runs}")
    out = compare(experiment=args.experiment, filter_string=args.filter, metric=args.metric,
                  output=args.output, max_runs=args.max_runs, track=not args.no_track)
    print(out.markdown)
    for path in out.files:
        print(f"wrote {path}")
    if out.run_id:
        print(f"MLflow run {out.run_id}: table and figure in {out.artifact_uri}")


def cmd_gc(args):
    from tasks.gc import Rule, gc
    if args.dry_run and args.yes:
        raise ReidError("reid gc takes --dry-run (the default: only show) or --yes (delete), "
                        "not both")
    rule = Rule(keep_last=args.keep_last, older_than_days=args.older_than, what=args.what)
    for line in gc(rule, experiment=args.experiment, delete=args.yes).lines():
        print(line)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable, help: str, weights: bool = False,
                aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, aliases=list(aliases))
        p.add_argument("--config", help="YAML recipe (default: params/synthetic.yml)")
        p.add_argument("--plugin", action="append", metavar="MODULE", help="import MODULE to "
                       "register your own datasets, backbones, ... (repeatable; added to the "
                       "config's PLUGINS)")
        if weights:
            p.add_argument("--weights", help="checkpoint to load (default: from OUTPUT_DIR)")
        p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                       help="config overrides, e.g. SOLVER.MAX_EPOCH 5")
        p.set_defaults(fn=fn, command_parser=p)
        return p

    run = command("run", cmd_run, "run a Prefect flow (default: the whole pipeline)")
    run.add_argument("--flow", choices=("pipeline", "distill"), default="pipeline")
    run.add_argument("--resume", action="store_true", help="resume training from OUTPUT_DIR")
    run.add_argument("--register", metavar="NAME", help="register the evaluated model (the "
                     "distill flow: the KD student) in the MLflow model registry as a version "
                     "of NAME")
    run.add_argument("--no-cache", action="store_true", help="recompute every stage, even "
                     "one whose config part, data, code and inputs equal an earlier successful "
                     "run's (whose outputs are reused by default)")
    run.add_argument("--max-parallel", type=int, default=2, metavar="N",
                     help="distill flow: independent branches (teachers, the KD and no-KD "
                     "students) at once (default 2; GPU trainings still take turns per GPU)")
    run.add_argument("--no-compare", action="store_true",
                     help="distill flow: skip the student trained without KD")
    run.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                     help="train with DDP on N local processes launched by torchrun (one "
                     "per GPU over NCCL; CPU processes over gloo when there is no GPU or "
                     "MODEL.DEVICE is cpu)")
    add_refused_torchrun_options(run)
    add_stage_commands(command)
    sweep = command("sweep", cmd_sweep, "run the pipeline once per point of a grid (a "
                    "reid-sweep Prefect flow), here or on a Prefect work pool's workers")
    sweep.add_argument("--grid", help="YAML grid: 'grid:' (config keys -> lists of values) "
                       "and/or 'points:' (override sets); see params/sweeps/ (required)")
    sweep.add_argument("--max-parallel", type=int, default=1, metavar="N",
                       help="points in flight at once (default 1)")
    sweep.add_argument("--work-pool", metavar="NAME", help="run each point as a run of the "
                       "pipeline deployment on this Prefect work pool (PREFECT_API_URL's "
                       "server; start workers with `prefect worker start --pool NAME`)")
    sweep.add_argument("--deployment", default="reid-pipeline/sweep-point",
                       help="with --work-pool: the pipeline deployment (prefect.yaml) to run "
                       "(default: reid-pipeline/sweep-point)")
    sweep.add_argument("--no-cache", action="store_true",
                       help="recompute every stage of every point")
    serve = sub.add_parser("serve", help="serve prefect.yaml's scheduled deployments "
                           "against the Prefect server named by PREFECT_API_URL")
    serve.add_argument("--prefect-file", default="prefect.yaml",
                       help="Prefect project file to serve (default: prefect.yaml)")
    serve.add_argument("--only", action="append", metavar="NAME",
                       help="serve only this deployment (repeatable)")
    serve.add_argument("--limit", type=int, default=1,
                       help="most flow runs at once (default 1; 0: no limit)")
    serve.set_defaults(fn=cmd_serve, command_parser=serve, opts=[])
    extract = command("extract", cmd_extract,
                      "write the features of a test set or an image folder to .npz", weights=True)
    extract.add_argument("--dataset", help="test set name (default: the first of DATASETS.TESTS)")
    extract.add_argument("--input", help="a folder of images (searched recursively) to extract "
                                         "instead of a test set; writes features and paths")
    # Checked in cmd_extract: argparse's "required" fires before options written after the
    # overrides are taken back from them.
    extract.add_argument("--output", help="output .npz file (required)")
    info = command("info", cmd_info, "print the model's parameters, GFLOPs, activations and "
                   "feature size (--env: the software and GPUs instead)")
    info.add_argument("--env", action="store_true", help="print the environment: Python, "
                      "PyTorch, CUDA, cuDNN, GPUs, faiss, Prefect, MLflow, DVC versions")
    add_visual_commands(sub, command, cmd_visualize)
    add_compare_command(sub)
    add_gc_command(sub)
    add_retrieval_commands(sub, Hooks(load=load, recipe=recipe, default_weights=default_weights,
                                      setup_logging=setup_logging, log_index=log_index_run,
                                      registered_weights=registered_weights))
    return parser


def log_index_run(args: argparse.Namespace, cfg, result: dict) -> str | None:
    """``reid index build``'s MLflow ``index`` run (tasks/index.py); None on ranks other than 0."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    from tasks.index import log_index
    return log_index(args, cfg, result)


def registered_weights(uri: str, output):
    """``--weights models:/NAME@ALIAS``: the registered version's config and weights."""
    from tasks.index import registered_weights as fetch
    return fetch(uri, output)


def add_compare_command(sub) -> None:
    """``reid compare``: no recipe and no overrides, only its own options."""
    p = sub.add_parser("compare", help="rank tracked runs in a table and a figure (MLflow)")
    p.add_argument("--experiment", help="MLflow experiment (default: the pipeline's, 'reid')")
    p.add_argument("--filter", help="MLflow search filter, e.g. "
                   "\"params.`SOLVER.BASE_LR` = '0.00035'\" or \"tags.`reid.flow` = 'pipeline'\"")
    p.add_argument("--metric", default="mAP", help="rank by this metric: mAP, Rank-1, mINP, "
                   "... (the mean over test sets) or <test set>.<metric> (default: mAP)")
    p.add_argument("--output", help="also write the table to FILE.md|.csv|.html and the figure "
                   "beside it as FILE.png")
    p.add_argument("--max-runs", type=int, default=20, help="newest runs compared (default 20)")
    p.add_argument("--no-track", action="store_true",
                   help="do not log the comparison as an MLflow run")
    p.set_defaults(fn=cmd_compare, command_parser=p, opts=[])


def add_gc_command(sub) -> None:
    """``reid gc``: shows what it would delete unless ``--yes`` (deleting cannot be undone)."""
    p = sub.add_parser("gc", help="delete old runs' checkpoints (or all artifacts) from the "
                       "MLflow artifact store; a dry run unless --yes")
    p.add_argument("--keep-last", type=int, metavar="N", help="keep the artifacts of the "
                   "newest N run groups (a pipeline run with its stage runs, or a stage run "
                   "started alone) that still hold any")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="prune only groups started more than DAYS days ago")
    p.add_argument("--what", default="checkpoints", help="checkpoints (default: the "
                   "checkpoints/ folders of the runs) or all (every artifact)")
    p.add_argument("--experiment", help="MLflow experiment (default: the pipeline's, 'reid')")
    p.add_argument("--dry-run", action="store_true", help="only show what would be deleted "
                   "and the bytes freed (the default)")
    p.add_argument("--yes", action="store_true", help="delete (runs behind a registered "
                   "model version and runs not ended are never pruned)")
    p.set_defaults(fn=cmd_gc, command_parser=p, opts=[])


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


def plugin_overrides(args: argparse.Namespace) -> list[str]:
    """``--plugin M`` (repeatable) as a PLUGINS override that adds M to the recipe's (and the
    overrides') PLUGINS: every process that reads the config imports it, torchrun workers and
    the saved config.yaml included."""
    if not getattr(args, "plugin", None):
        return []
    from reid.config import load_config
    from reid.utils.plugins import import_plugins
    import_plugins(args.plugin)  # first: the config may name what they register
    configured = load_config(recipe(args.config), args.opts).PLUGINS
    return ["PLUGINS", repr(list(dict.fromkeys([*configured, *args.plugin])))]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides, options = split_options(args.command_parser, args.opts)
    args.command_parser.parse_args(options, namespace=args)  # resets args.opts: set it after
    args.opts = overrides
    setup_logging()
    if threading.current_thread() is threading.main_thread():
        install_stop_handlers()
    try:
        args.opts += plugin_overrides(args)
        args.fn(args)
    except ReidError as exc:
        print(f"{USER_ERROR_PREFIX}{one_line(exc)}", file=sys.stderr)
        stop_the_job()  # a torchrun worker: no restart can cure a user error
        return 2
    except OSError as exc:  # a file the run needs (disk full, permissions): no traceback
        print(f"{USER_ERROR_PREFIX}{describe_os_error(exc)}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        from tasks.prefect_server import startup_failure
        line = startup_failure(exc)
        if line is None:
            raise
        print(f"{USER_ERROR_PREFIX}{line}", file=sys.stderr)
        return 1
    except Preempted as exc:  # a training stopped by a signal, its checkpoint written
        print(f"{STOPPED_PREFIX}{exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated as exc:
        name = signal.Signals(exc.signum).name
        print(f"reid: terminated ({name}); runs closed as KILLED", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("reid: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
