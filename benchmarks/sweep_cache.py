"""A local sweep run twice (flows/sweep.py): the second run of the same grid reuses every
train, precise-BN and evaluate stage (tasks/stage_cache.py). Prints both wall times and how
many stage runs of the second sweep were reused, side by side.

    .venv/bin/python benchmarks/sweep_cache.py [--max-parallel 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stage_cache import tiny_overrides  # noqa: E402  (the same tiny set and schedule)

GRID = "grid:\n  SOLVER.BASE_LR: [0.00035, 0.0007]\n  SEED: [1, 2]\n"


def reused_stages(sweep_run: str) -> tuple[int, int]:
    """(reused, all) stage runs under the sweep's pipeline runs."""
    from mlflow.tracking import MlflowClient
    from tasks.stage_cache import REUSED_TAG
    client = MlflowClient()
    exp = client.get_run(sweep_run).info.experiment_id
    points = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{sweep_run}'")
    stages = [s for p in points for s in client.search_runs(
        [exp], f"tags.`mlflow.parentRunId` = '{p.info.run_id}' and tags.`reid.stage` != "
        "'prepare'")]
    return sum(REUSED_TAG in s.data.tags for s in stages), len(stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-parallel", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reid-sweep-bench-") as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        import torch
        torch.set_num_threads(1)
        from flows.sweep import run_sweep
        grid = folder / "grid.yml"
        grid.write_text(GRID)
        overrides = tiny_overrides(folder)
        rows = []
        for label in ("first sweep (4 points)", "same sweep again"):
            start = time.perf_counter()
            out = run_sweep(str(ROOT / "params" / "synthetic.yml"), str(grid), overrides,
                            max_parallel=args.max_parallel)
            rows.append((label, time.perf_counter() - start, *reused_stages(out["mlflow_run_id"])))
    print(f"{'run':<28}{'wall s':>9}{'stages reused':>16}")
    for label, seconds, reused, total in rows:
        print(f"{label:<28}{seconds:9.2f}{f'{reused}/{total}':>16}")
    print(f"second / first: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
