"""Raw-pixel re-identification baseline: how far does matching the pixels themselves get?

Every query and gallery image is resized (bicubic) to ``size`` = (height, width), flattened,
L2-normalised and ranked by cosine distance under the Market-1501 protocol. A dataset on
which this scores high can be solved without learning anything; the synthetic set is tuned so
that it scores about 10-20 % mAP while a small CNN learns far more.

    python benchmarks/raw_pixel_baseline.py --root data [--dataset NAME] [--size H W]
                                            [--compare OUTPUT_DIR/results.json]

(defaults: --dataset SyntheticMarket1501 --size 128 64). With ``--compare`` it prints a trained
model's results (the pipeline's results.json) beside the baseline, and their mAP ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reid.data.datasets import DATASET_REGISTRY
from reid.evaluation.rank import evaluate_rank, summarize


def pixel_features(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """``N x (3*H*W)`` float32 rows of unit L2 norm."""
    h, w = size
    feats = np.empty((len(paths), 3 * h * w), dtype=np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            feats[i] = np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC),
                                  dtype=np.float32).ravel()
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.maximum(norms, 1e-12)


def raw_pixel_baseline(root: str | Path, dataset_name: str = "SyntheticMarket1501",
                       size: tuple[int, int] = (128, 64)) -> dict[str, float]:
    """Rank-1/5/10, mAP and mINP (percent) of raw pixels on the test split of a dataset."""
    dataset = DATASET_REGISTRY.get(dataset_name)(str(root))
    q_feats = pixel_features([r[0] for r in dataset.query], size)
    g_feats = pixel_features([r[0] for r in dataset.gallery], size)
    distmat = 1.0 - q_feats @ g_feats.T  # cosine distance of unit vectors

    def column(records: list, i: int) -> np.ndarray:
        return np.array([r[i] for r in records], dtype=np.int64)

    cmc, all_ap, all_inp = evaluate_rank(distmat, column(dataset.query, 1),
                                         column(dataset.gallery, 1), column(dataset.query, 2),
                                         column(dataset.gallery, 2), max_rank=50)
    return summarize(cmc, all_ap, all_inp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="datasets root (DATASETS.ROOT)")
    parser.add_argument("--dataset", default="SyntheticMarket1501", help="registered dataset name")
    parser.add_argument("--size", nargs=2, type=int, default=(128, 64), metavar=("H", "W"))
    parser.add_argument("--compare", type=Path, help="a results.json to print beside the baseline")
    args = parser.parse_args(argv)
    from reid.errors import ReidError, one_line

    start = time.perf_counter()
    try:
        results = raw_pixel_baseline(args.root, args.dataset, tuple(args.size))
    except ReidError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    trained = _trained_results(args.compare, args.dataset) if args.compare else None
    print(f"raw pixels {args.size[0]}x{args.size[1]} on {args.dataset} ({args.root}):")
    print(f"  {'':<8} {'raw':>9}" + (f" {'trained':>10}" if trained else ""))
    for key, value in results.items():
        print(f"  {key:<8} {value:7.2f} %" + (f" {trained[key]:8.2f} %" if trained else ""))
    if trained:
        ratio = trained["mAP"] / max(results["mAP"], 1e-9)
        print(f"  trained mAP / raw-pixel mAP = {ratio:.2f}x")
    print(f"  time     {elapsed:6.2f} s")
    return 0


def _trained_results(path: Path, dataset: str) -> dict | None:
    """The dataset's entry of a results.json, or None (with a note) when it is not there."""
    try:
        return json.loads(path.read_text())[dataset]
    except (OSError, ValueError, KeyError):
        print(f"note: no {dataset} results in {path}; printing the baseline alone", file=sys.stderr)
        return None


if __name__ == "__main__":
    sys.exit(main())
