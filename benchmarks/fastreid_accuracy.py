"""Side-by-side accuracy with FastReID 1.4 at the same recipe (issue 11 item 1).

    .venv/bin/python benchmarks/fastreid_accuracy.py --work /work/parity [--seeds 1 2 3]
        [--settings standard hard] [--ids 250] [--images-per-id 12] [--set KEY VALUE ...]

One YAML file in FastReID's own format (``--recipe``, default
``benchmarks/fastreid_recipes/bagtricks_R18-128x64.yml``: BoT-R18 128x64 from scratch, batch 64,
P x K with K = 4, Adam 3.5e-4, 30 epochs, steps 20 / 27, 100 warm-up iterations) is fed
unchanged to FastReID 1.4 (its own ``DefaultTrainer`` in its own environment, through
``benchmarks/fastreid_train.py``) and to this project (the stage commands of the pipeline,
``reid prepare``, ``train``, ``precise-bn``, ``evaluate``, no tracking), on the same
Market-layout folders written by our synthetic generator outside the repository: one per
``--settings`` name (``standard``; ``hard``: shared clothing colours, more occlusion, scale and
position jitter), ``--ids`` training and as many test identities.
Each (folder, seed, side) is one cell, run in interleaved order (FastReID then ours, per seed)
so that a slower stretch of the machine hits both sides alike.

Cells are kept: ``WORK/runs/<setting>/<side>-seed<k>/cell.json`` holds the metrics, the wall time
(process start to results, evaluation included), the date, machine and commit; a later call
reuses the cells whose recipe, overrides and folder are the same, so the benchmark can be
spread over several sessions (``--report`` prints the table from the kept cells alone).
Wall times are comparable only between cells of the same machine; the table says which.
An interrupted cell goes on from its last checkpoint at the next call (both sides write one
every ``CHECKPOINT_MINUTES`` of training; FastReID's every ``FASTREID_CHECKPOINT_EPOCHS``):
ours resumes exactly (the same weights as an uninterrupted run, random state included),
FastReID with its own resume (model, optimizer, scheduler and iteration, not the random
state: a statistically equal run, not the same one). A resumed cell's wall time is that of its
last part, marked ``resumed`` (the table leaves it out).

Before the cells, ``--ours-config`` (default ``params/bagtricks_R18-128x64.yml``, the same
recipe in params/ style: ``_BASE_`` + overrides) is checked to give the same merged config as the
FastReID file in this project; training is deterministic per seed, so equal configs train
identically and the params/ file needs no cells of its own.

The report: per folder and side, the mean and sample standard deviation over seeds of Rank-1,
mAP, mINP and the wall time, then ours minus FastReID's mean mAP against the issue's bound
(within 0.5 points or higher).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = REPO / "benchmarks" / "fastreid_recipes" / "bagtricks_R18-128x64.yml"
OURS_CONFIG = REPO / "params" / "bagtricks_R18-128x64.yml"
FASTREID_PYTHON = Path("/work/fastreid-venv/bin/python")
REID = REPO / ".venv" / "bin" / "reid"
GENERATOR_SEEDS = {"standard": 2027, "hard": 2028}  # other identities than data/ (seed 0)
METRICS = ("Rank-1", "mAP", "mINP")
MAP_BOUND = 0.5  # the bound: our mean mAP within 0.5 points of FastReID's, or higher


# --------------------------------------------------------------------------- folders
def folder(work: Path, setting: str, ids: int, images_per_id: int) -> Path:
    """The Market-layout folder of ``setting`` under WORK/data (generated once)."""
    from reid.data.synthetic import generate_synthetic_market, generated_with, generator_arguments
    arguments = dict(seed=GENERATOR_SEEDS[setting], num_train_ids=ids, num_test_ids=ids,
                     images_per_id=images_per_id, difficulty=setting)
    root = work / "data" / f"{setting}-{ids}ids-{images_per_id}img"
    target = root / "SyntheticMarket1501"
    if generated_with(target) != generator_arguments(**arguments):
        print(f"generating the {setting} folder in {root} ...", flush=True)
        generate_synthetic_market(root, **arguments)
    return target  # holds Market-1501-v15.09.15: FastReID's FASTREID_DATASETS, our ROOT


# --------------------------------------------------------------------------- configs
def as_built(cfg) -> dict:
    """The flattened config as the builders read it: registry aliases resolved (FastReID 1.4's
    ``GlobalAvgPool`` is ``avgpool``), the training sampler by the loader's rule (1.4's
    SAMPLER_TRAIN or the seed's PK_SAMPLER / NAIVE_WAY switches)."""
    from reid.data.samplers import train_sampler_name
    from reid.modeling.layers.classification import CLS_LAYER_REGISTRY
    from reid.modeling.layers.pooling import POOLING_REGISTRY
    flat = dict(cfg.flatten())
    for switch in ("DATALOADER.PK_SAMPLER", "DATALOADER.NAIVE_WAY"):
        flat.pop(switch)
    flat["DATALOADER.SAMPLER_TRAIN"] = train_sampler_name(cfg)
    for key, registry in (("MODEL.HEADS.POOL_LAYER", POOLING_REGISTRY),
                          ("MODEL.HEADS.CLS_LAYER", CLS_LAYER_REGISTRY)):
        flat[key] = registry.canonical(flat[key])
    return flat


def check_params_style(recipe: Path, ours: Path, overrides: list[str]) -> list[str]:
    """Keys whose values, as built, differ between the FastReID file and the params/ file."""
    from reid.config import load_config
    a, b = (as_built(load_config(path, overrides)) for path in (recipe, ours))
    return [f"{key}: {a.get(key)!r} vs {b.get(key)!r}" for key in sorted(set(a) | set(b))
            if key != "OUTPUT_DIR" and a.get(key) != b.get(key)]


# --------------------------------------------------------------------------- cells
def cell_identity(recipe: Path, overrides: list[str], data: Path, side: str, seed: int) -> dict:
    """What a kept cell must match to be reused."""
    record = json.loads((data / "generator.json").read_text())
    return dict(recipe=str(recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe),
                recipe_sha256=hashlib.sha256(recipe.read_bytes()).hexdigest(),
                overrides=overrides, data=record, side=side, seed=seed)


def run_logged(command: list[str], log: Path, env: dict | None = None) -> None:
    """Run ``command`` with its output in ``log``; a failure names the log's last lines."""
    with open(log, "ab") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise SystemExit(f"{command[0]} exited {code}; last lines of {log}:\n" + "\n".join(tail))


# Checkpoints for interrupted cells only: they change no step of either training.
CHECKPOINT_MINUTES = 10
FASTREID_CHECKPOINT_EPOCHS = 3  # FastReID counts in epochs: ~10 minutes at one thread here


def run_fastreid(recipe: Path, overrides: list[str], data: Path, out: Path, seed: int,
                 python: Path, resume: bool) -> dict:
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"}
    # FastReID compiles its Cython ranking with `python3` from PATH: its own interpreter here
    run_logged([str(python), str(REPO / "benchmarks" / "fastreid_train.py"), "--config",
                str(recipe), "--data", str(data), "--output", str(out), "--seed", str(seed),
                *(["--resume"] if resume else []), *overrides,
                "SOLVER.CHECKPOINT_PERIOD", str(FASTREID_CHECKPOINT_EPOCHS)],
               out / "benchmark.log", env)
    for periodic in out.glob("model_0*.pth"):  # only needed while the cell was unfinished
        periodic.unlink()
    return json.loads((out / "fastreid_result.json").read_text())["metrics"]


def run_ours(recipe: Path, overrides: list[str], data: Path, out: Path, seed: int,
             resume: bool) -> dict:
    from reid.stage_table import PIPELINE, STAGES
    keys = [*overrides, "DATASETS.ROOT", str(data), "OUTPUT_DIR", str(out), "SEED", str(seed)]
    # the pipeline's stages as `reid run` chains them (precise-BN only when the recipe enables
    # it, as FastReID's hook; evaluate is the final evaluation FastReID's EvalHook runs)
    for stage in PIPELINE:
        extra = ([*(["--resume"] if resume else []), "SOLVER.CHECKPOINT_PERIOD_MINUTES",
                  str(CHECKPOINT_MINUTES)] if stage == "train" else [])
        run_logged([str(REID), STAGES[stage].command, "--config", str(recipe), "--no-track",
                    *keys, *extra], out / "benchmark.log")
    (name, metrics), = json.loads((out / "results.json").read_text()).items()
    return metrics


def machine_name() -> str:
    """Host name, CPU count and model: wall times compare only within one machine."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown cpu")
    return f"{platform.node()}, {os.cpu_count()} x {model}"


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def interrupted_cell(out: Path, identity: dict) -> bool:
    """Whether ``out`` holds a checkpoint of an unfinished cell with this identity."""
    started = out / "identity.json"
    return (started.is_file() and json.loads(started.read_text()) == identity
            and (out / "last_checkpoint").is_file())


def kept_cell(out: Path, identity: dict) -> dict | None:
    """The finished cell kept in ``out`` when it has this identity."""
    kept = out / "cell.json"
    if kept.is_file():
        cell = json.loads(kept.read_text())
        if cell["identity"] == identity:
            return cell
    return None


def keep_cell(out: Path, identity: dict, metrics: dict, started: float, resumed: bool,
              machine: str, label: str) -> dict:
    """Write a finished cell to ``out/cell.json`` (its wall time counted from ``started``)
    and print its metrics after ``label``."""
    cell = dict(identity=identity, metrics={k: float(metrics[k]) for k in METRICS},
                wall_s=round(time.perf_counter() - started, 1), resumed=resumed,
                date=date.today().isoformat(), machine=machine, commit=commit())
    (out / "cell.json").write_text(json.dumps(cell, indent=1) + "\n")
    print(f"{label}: " + ", ".join(f"{k} {cell['metrics'][k]:.2f}" for k in METRICS)
          + f", {cell['wall_s']:.0f} s", flush=True)
    return cell


def start_cell(out: Path, identity: dict) -> bool:
    """Prepare ``out`` for a cell; True when it resumes an interrupted one. A changed cell, or
    one that saved nothing yet, starts from nothing (its files removed)."""
    if interrupted_cell(out, identity):
        return True
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.is_file():
            stale.unlink()
    (out / "identity.json").write_text(json.dumps(identity, indent=1) + "\n")
    return False


def run_cell(args: argparse.Namespace, setting: str, data: Path, side: str, seed: int) -> dict:
    out = args.work / "runs" / setting / f"{side}-seed{seed}"
    identity = cell_identity(args.recipe, args.set, data, side, seed)
    cell = kept_cell(out, identity)
    if cell is not None or args.report:
        return cell or {}
    resume = start_cell(out, identity)
    print(f"{setting} {side} seed {seed}: {'resuming' if resume else 'training'} ...", flush=True)
    start = time.perf_counter()
    metrics = (run_fastreid(args.recipe, args.set, data, out, seed, args.fastreid_python, resume)
               if side == "fastreid" else run_ours(args.recipe, args.set, data, out, seed, resume))
    return keep_cell(out, identity, metrics, start, resume, args.machine,
                     f"{setting} {side} seed {seed}")


# --------------------------------------------------------------------------- report
def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def report(cells: dict[tuple[str, str], list[dict]], settings: list[str]) -> bool:
    """Print the table; True when every folder meets the mAP bound with all seeds present."""
    print("\n| folder | side | seeds | Rank-1 | mAP | mINP | wall s | machines |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for setting in settings:
        for side in ("fastreid", "ours"):
            runs = cells.get((setting, side), [])
            row = [spread([r["metrics"][m] for r in runs]) for m in METRICS]
            machines = ", ".join(sorted({r["machine"] for r in runs})) or "-"
            walls = [r["wall_s"] for r in runs if not r.get("resumed")]  # whole runs only
            print(f"| {setting} | {'FastReID 1.4' if side == 'fastreid' else 'this project'} | "
                  f"{len(runs)} | {' | '.join(row)} | {spread(walls)} | {machines} |")
    print()
    for setting in settings:
        ref, ours = (cells.get((setting, side), []) for side in ("fastreid", "ours"))
        if not ref or not ours:
            print(f"{setting}: incomplete ({len(ref)} FastReID, {len(ours)} ours seeds)")
            ok = False
            continue
        delta = (statistics.fmean(r["metrics"]["mAP"] for r in ours)
                 - statistics.fmean(r["metrics"]["mAP"] for r in ref))
        within = delta >= -MAP_BOUND
        ok &= within and len(ref) == len(ours) >= 3
        print(f"{setting}: ours - FastReID mean mAP = {delta:+.2f} points "
              f"({'within' if within else 'OUTSIDE'} the {MAP_BOUND}-point bound; "
              f"{len(ours)} seeds each)")
    return ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True,
                        help="folders and runs (outside the repository)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=["standard", "hard"],
                        choices=sorted(GENERATOR_SEEDS))
    parser.add_argument("--ids", type=int, default=250, help="training (= test) identities")
    parser.add_argument("--images-per-id", type=int, default=12)
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="FastReID-format YAML")
    parser.add_argument("--ours-config", type=Path, default=OURS_CONFIG,
                        help="the same recipe in params/ style (checked equal, not trained)")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="an override applied to both sides (e.g. SOLVER.MAX_EPOCH 10)")
    parser.add_argument("--fastreid-python", type=Path, default=FASTREID_PYTHON)
    parser.add_argument("--machine", default=machine_name(),
                        help="the machine's name in the kept cells")
    parser.add_argument("--report", action="store_true", help="only print the kept cells")
    args = parser.parse_args(argv)
    args.set = [item for pair in args.set for item in pair]
    args.recipe, args.work = args.recipe.resolve(), args.work.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    differences = check_params_style(args.recipe, args.ours_config, args.set)
    print(f"params/ style recipe {args.ours_config.name} vs {args.recipe.name}: "
          + ("same merged config" if not differences else "DIFFERENT: " + "; ".join(differences)))
    cells: dict[tuple[str, str], list[dict]] = {}
    for setting in args.settings:
        data = folder(args.work, setting, args.ids, args.images_per_id)
        for seed in args.seeds:
            for side in ("fastreid", "ours"):
                cell = run_cell(args, setting, data, side, seed)
                if cell:
                    cells.setdefault((setting, side), []).append(cell)
    return 0 if report(cells, args.settings) and not differences else 1


if __name__ == "__main__":
    sys.exit(main())
