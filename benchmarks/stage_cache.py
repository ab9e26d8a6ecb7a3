"""Stage caching (tasks/stage_cache.py): the same pipeline run twice on a tiny synthetic set;
prints the wall time of the first run (every stage computed) and of the second (train,
precise-BN and evaluate reused from MLflow), side by side.

    .venv/bin/python benchmarks/stage_cache.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tiny_overrides(folder: Path) -> list[str]:
    from reid.data.synthetic import generate_synthetic_market
    generate_synthetic_market(folder / "data", num_train_ids=8, num_test_ids=6, num_cameras=3,
                              images_per_id=6, num_distractors=4, num_junk=3, size=(64, 32))
    values = {"DATASETS.ROOT": folder / "data", "OUTPUT_DIR": folder / "out",
              "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 8, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 6,
              "DATASETS.SYNTHETIC.NUM_CAMERAS": 3, "DATASETS.SYNTHETIC.IMAGES_PER_ID": 6,
              "DATASETS.SYNTHETIC.NUM_DISTRACTORS": 4, "DATASETS.SYNTHETIC.NUM_JUNK": 3,
              "DATASETS.SYNTHETIC.SIZE": "[64, 32]", "MODEL.DEVICE": "cpu",
              "INPUT.SIZE_TRAIN": "[64, 32]", "INPUT.SIZE_TEST": "[64, 32]",
              "DATALOADER.NUM_WORKERS": 0, "SOLVER.MAX_EPOCH": 4, "SOLVER.IMS_PER_BATCH": 16,
              "SOLVER.STEPS": "[2]", "SOLVER.WARMUP_ITERS": 2, "TEST.IMS_PER_BATCH": 32,
              "TEST.PRECISE_BN.NUM_ITER": 4}
    return [str(item) for pair in values.items() for item in pair]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="reid-cache-bench-") as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        import torch
        torch.set_num_threads(1)
        from flows.pipeline import pipeline
        overrides = tiny_overrides(folder)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            pipeline(config=str(ROOT / "params" / "synthetic.yml"), overrides=overrides)
            times.append(time.perf_counter() - start)
    first, second = times
    print(f"{'run':<36}{'wall s':>9}")
    print(f"{'first (all stages computed)':<36}{first:9.2f}")
    print(f"{'second (train/BN/evaluate reused)':<36}{second:9.2f}")
    print(f"second / first: {second / first:.2f}")


if __name__ == "__main__":
    main()
