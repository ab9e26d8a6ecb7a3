"""Re-ranking's and AQE's neighbour search: the torch path (``all_pairs_knn``: symmetric
tiles, farthest distance kept) against faiss's exact flat search, in one process, interleaved.

    python benchmarks/faiss_neighbors.py [--items 19281] [--dim 2048] [--k 21] [--repeats 2]

faiss cannot give re-ranking's per-item farthest distance and computes all N x N products
(the torch path computes the tiles on and above the diagonal only), so it can only win on
kernel speed; the neighbour lists are compared for equality (ties aside) as well as the time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reid.evaluation.neighbors import METRIC_SPACES, all_pairs_knn  # noqa: E402
from reid.retrieval import faiss_index  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=19_281)  # Market query + gallery
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=21)  # re-ranking's k1 + 1
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from faiss_synthetic import FeatureModel
    rng = np.random.default_rng(0)
    model = FeatureModel(args.dim)
    feats = model.images(rng.integers(0, args.items // 10, args.items),
                         rng.integers(0, 6, args.items), rng)
    space = METRIC_SPACES.get("cosine")
    prepared = space.prepare(torch.from_numpy(feats))
    timings = {"torch all_pairs_knn": [], "faiss IndexFlatIP": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        torch_ids = all_pairs_knn(prepared, args.k, space).indices.numpy()
        timings["torch all_pairs_knn"].append(time.perf_counter() - started)
        started = time.perf_counter()
        index = faiss_index.new_index("Flat", args.dim, "cosine")
        unit = faiss_index.prepare(feats, "cosine")
        index.add(unit)
        faiss_ids = index.search(unit, args.k)[1]
        timings["faiss IndexFlatIP"].append(time.perf_counter() - started)
    same = np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(torch_ids, faiss_ids)])
    print(f"{args.items} items x {args.dim}-d, k={args.k}, {torch.get_num_threads()} threads")
    for name, values in timings.items():
        print(f"{name:<22} best {min(values):7.2f} s  (runs: "
              f"{', '.join(f'{v:.2f}' for v in values)})")
    print(f"neighbour lists in common: {same:.4f}")


if __name__ == "__main__":
    main()
