"""What each difference between the embedded default recipe and FastReID's costs or gains
(issue 11 item 4), measured on the default synthetic set through the real entry point.

    .venv/bin/python benchmarks/recipe_ablation.py --work /work/ablation [--seeds 0 1 2]

``params/synthetic.yml`` differs from FastReID 1.4's BoT recipe (``Base-bagtricks.yml``) in
scale (12 epochs, steps 7 / 10 counted after a 20-iteration warm-up, LAST_STRIDE 1, 2 loader
workers: what makes it fit its 10-minute budget on 2 cores) and, since the ablation of
2026-12-06, in one choice of its own: ``INPUT.PADDING 6`` (FastReID: 10). ``padding-10`` takes
it back to FastReID's value; ``bias-lr-2.0`` and ``precise-bn`` put back the two choices that
ablation dropped (``SOLVER.BIAS_LR_FACTOR 2.0``: no measurable effect; precise-BN on: 1.1-2.4
mAP worse), and ``float32`` turns the default's speed keys off (bf16, channels_last, fused
Adam). ``reid run`` (prepare -> train -> precise-BN -> evaluate, MLflow in WORK/mlflow.db)
trains each variant once per seed. Cells are kept in ``WORK/<variant>/seed<k>/cell.json`` and
reused when the recipe file and the overrides are unchanged, as in
``benchmarks/fastreid_accuracy.py``; a cell cut off (a session's end, a kill) goes on from its
last checkpoint (one every ``CHECKPOINT_MINUTES`` of training; the resume is exact) at the next
call, and its wall time, that of its last part only, is left out of the report.

The report: per variant, mean and spread over the seeds of Rank-1, mAP, mINP and the wall time,
and the mean mAP difference to the default with the seeds paired (the same seed draws the same
batches whatever the variant, so pairing removes most of the seed-to-seed spread).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastreid_accuracy import (CHECKPOINT_MINUTES, METRICS, REID, REPO,  # noqa: E402
                               keep_cell, kept_cell, machine_name, run_logged, spread,
                               start_cell)

RECIPE = REPO / "params" / "synthetic.yml"
VARIANTS = {  # name -> overrides changing one choice of the default
    "default": [],
    "padding-10": ["INPUT.PADDING", "10"],  # FastReID's value
    "bias-lr-2.0": ["SOLVER.BIAS_LR_FACTOR", "2.0"],  # the default's before the ablation
    "precise-bn": ["TEST.PRECISE_BN.ENABLED", "True"],  # the default's before the ablation
    # Not a FastReID difference but the default's speed keys (issue 16): all back to float32.
    "float32": ["SOLVER.BF16_ENABLED", "False", "SOLVER.CHANNELS_LAST", "False",
                "SOLVER.FUSED", "False", "TEST.BF16", "False"],
}


def run_cell(args: argparse.Namespace, variant: str, seed: int) -> dict:
    out = args.work / variant / f"seed{seed}"
    identity = dict(recipe_sha256=hashlib.sha256(RECIPE.read_bytes()).hexdigest(),
                    overrides=VARIANTS[variant], seed=seed)
    cell = kept_cell(out, identity)
    if cell is not None or args.report:
        return cell or {}
    resume = start_cell(out, identity)
    print(f"{variant} seed {seed}: reid run{' --resume' if resume else ''} ...", flush=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{args.work / 'mlflow.db'}"}
    start = time.perf_counter()
    run_logged([str(REID), "run", "--config", str(RECIPE), *(["--resume"] if resume else []),
                "OUTPUT_DIR", str(out), "SEED", str(seed), *VARIANTS[variant],
                "SOLVER.CHECKPOINT_PERIOD_MINUTES", str(CHECKPOINT_MINUTES)],
               out / "benchmark.log", env)
    (name, metrics), = json.loads((out / "results.json").read_text()).items()
    return keep_cell(out, identity, metrics, start, resume, args.machine,
                     f"{variant} seed {seed}")


def report(cells: dict[str, dict[int, dict]]) -> None:
    print("\n| variant | overrides | seeds | Rank-1 | mAP | mINP | wall s | mAP vs default "
          "(paired) |")
    print("|---|---|---|---|---|---|---|---|")
    base = cells.get("default", {})
    for variant, runs in cells.items():
        values = list(runs.values())
        paired = [runs[s]["metrics"]["mAP"] - base[s]["metrics"]["mAP"] for s in runs if s in base]
        delta = (f"{statistics.fmean(paired):+.2f} ({len(paired)} seeds)"
                 if paired and variant != "default" else "-")
        row = [spread([r["metrics"][m] for r in values]) for m in METRICS]
        walls = [r["wall_s"] for r in values if not r.get("resumed")]  # whole runs only
        print(f"| {variant} | {' '.join(VARIANTS[variant]) or '-'} | {len(values)} | "
              f"{' | '.join(row)} | {spread(walls)} | {delta} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="runs and their MLflow store")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--machine", default=machine_name())
    parser.add_argument("--report", action="store_true", help="only print the kept cells")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    cells: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:  # seed-major: a partial run still pairs every variant with default
        for variant in args.variants:
            cell = run_cell(args, variant, seed)
            if cell:
                cells.setdefault(variant, {})[seed] = cell
    report(cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
