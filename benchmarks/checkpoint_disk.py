"""Disk use of checkpoints, in OUTPUT_DIR and in MLflow's artifacts, and the training losses, of
the default recipe (params/synthetic.yml, shortened) on this checkout and on an earlier one,
side by side: `reid train` then `reid precise-bn`, tracked, as DVC runs them.

    git archive <commit> | tar -x -C /tmp/old      # the peer: an earlier commit's files
    python benchmarks/checkpoint_disk.py --peer /tmp/old --data data --epochs 2

Prints, per side: the seconds of each stage, the bytes of OUTPUT_DIR, of the MLflow artifact
folder and of each logged weights file (and whether it holds optimizer state); then whether
every logged iteration's losses and LR are bit-identical between the two sides.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_side(name: str, source: Path, data: str, epochs: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(source),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    args = ["--config", str(source / "params" / "synthetic.yml"), "DATASETS.ROOT", data,
            "SOLVER.MAX_EPOCH", str(epochs), "SOLVER.CHECKPOINT_PERIOD", "1",
            "OUTPUT_DIR", str(work / "out")]
    seconds = {}
    for stage in ("train", "precise-bn"):
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "reid.cli", stage, *args], cwd=work,
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} {stage} failed: {done.stderr[-2000:]}")
        seconds[stage] = time.monotonic() - start
    import torch
    logged = {p.name: (p.stat().st_size, set(torch.load(p, weights_only=True)) - {"model"})
              for p in (work / "mlartifacts").rglob("*.pth")}
    records = [json.loads(line) for line in (work / "out" / "metrics.json").read_text()
               .splitlines() if line.strip()]
    return {"seconds": seconds, "output_dir": folder_bytes(work / "out"),
            "artifacts": folder_bytes(work / "mlartifacts"), "logged": logged,
            "losses": [{k: v for k, v in r.items() if "loss" in k or k in ("lr", "iteration")}
                       for r in records]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, help="an earlier checkout's folder")
    parser.add_argument("--data", default=str(ROOT / "data"), help="DATASETS.ROOT")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reid-checkpoint-disk-") as tmp:
        sides = {name: run_side(name, source, args.data, args.epochs, Path(tmp) / name)
                 for name, source in (("peer", Path(args.peer)), ("this", ROOT))}
    for name, side in sides.items():
        print(f"{name}: train {side['seconds']['train']:.0f} s, precise-BN "
              f"{side['seconds']['precise-bn']:.0f} s; OUTPUT_DIR {side['output_dir']:,} B; "
              f"MLflow artifacts {side['artifacts']:,} B")
        for file, (size, extra) in sorted(side["logged"].items()):
            print(f"  logged {file}: {size:,} B, entries besides the model: {sorted(extra)}")
    same = sides["peer"]["losses"] == sides["this"]["losses"]
    print(f"losses and LR of all {len(sides['this']['losses'])} logged iterations "
          f"bit-identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
