"""faiss retrieval at scale, against the exact engine, on the CPU cores given (default 2).

    python benchmarks/faiss_retrieval.py                  # market + million
    python benchmarks/faiss_retrieval.py --parts big      # 2048-d Market+500k from a .npy
    python benchmarks/faiss_retrieval.py --gallery 200000 --queries 2000   # a smaller run

Parts (each measurement runs in its own process, pinned to ``--cores`` cores, so its peak
RSS is its own, features included):

* ``market``: Market-1501+500k-sized evaluation (3,368 queries x 515,913 gallery, 512-d):
  the exact streaming engine (``evaluate_features``) against approximate evaluation
  (``index=--market-index``, top ``--candidates``, index build included in its time);
  mAP, Rank-1, time, peak RSS, and the candidates' recall against exact search.
* ``million``: a ``--gallery`` x 512-d gallery (memory-mapped .npy) and ``--queries``
  queries: for Flat (exact: the reference), IVF-PQ with exact re-scoring and HNSW, the build
  time, the index's size (serialised faiss index; the features stay on disk, memory-mapped,
  for re-scoring), the time to answer every query (k=10), recall@10 against Flat, peak RSS.
* ``big``: the exact engine on Market+500k with 2048-d features read from a memory-mapped
  .npy (4.2 GB on disk): time and peak RSS.
* ``partition``: recall@10 of IVF-Flat at several list counts (``--partition-lists``) and
  fractions of the gallery scanned (``--gallery`` rows): how much of IVF's recall the coarse
  partition alone costs, to choose the list count.

Features: ``benchmarks/faiss_synthetic.py`` (clustered by identity, camera-biased, with a
shared mean and low-rank nuisance: re-id-like, see its docstring), written once into
``--work`` and reused by later runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import faiss_synthetic  # noqa: E402

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- children
def child_market(work: Path, mode: str, index: str, candidates: int, dim: int) -> dict:
    index, _, params = index.partition(":")
    import torch
    from reid.evaluation.features import evaluate_features
    # imported before the clock starts, as in `reid eval` (the model already loaded them):
    # the approximate path's faiss Gallery brings torchvision (~2 s)
    for module in ("reid.evaluation.approximate", "reid.retrieval.bf16_scan",
                   "reid.retrieval.gallery"):
        importlib.import_module(module)
    folder = work / f"market{dim}"
    labels = np.load(folder / "labels.npz")
    mmap = "r" if dim > 512 else None  # the 2048-d gallery stays on disk
    started = time.perf_counter()
    q = np.load(folder / "query.npy")
    g = np.load(folder / "gallery.npy", mmap_mode=mmap)
    loaded = time.perf_counter()
    kwargs = {} if mode == "exact" else {"index": index, "candidates": candidates,
                                         "index_params": params or None}
    result = evaluate_features(q, g, labels["q_pids"], labels["g_pids"], labels["q_cams"],
                               labels["g_cams"], device="cpu", **kwargs)
    done = time.perf_counter()
    # the engine's time (features in memory, as after extraction) and the whole, file
    # reading included
    out = {"mode": mode, "gallery": int(len(g)), "dim": dim, "seconds": done - started,
           "engine_s": done - loaded,
           "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
           **{k: v for k, v in result.summary().items()}}
    return out


def child_million(work: Path, index_type: str, search_params: str, rescore: int | None,
                  repeats: int = 1) -> dict:
    import faiss
    from reid.retrieval import Gallery
    from reid.retrieval.recall import recall_at
    folder = work / "million"
    queries = np.load(folder / "query.npy")
    started = time.perf_counter()
    gallery = Gallery.build(str(folder / "gallery.npy"), index_type, "cosine",
                            search_params=search_params or None, rescore=rescore)
    build = time.perf_counter() - started
    index_mb = len(faiss.serialize_index(gallery.cpu_index())) / 2**20
    searches = []  # the first search pays first-call costs (page faults, oneDNN kernels)
    for _ in range(repeats):
        started = time.perf_counter()
        ids = gallery.search(queries, 10).ids
        searches.append(time.perf_counter() - started)
    search = searches[0]
    reference = folder / "exact_top10.npy"
    if index_type == "Flat":
        np.save(reference, ids)
    exact = np.load(reference)
    recall = recall_at(ids, exact, 10)
    return {"index": index_type, "params": gallery.search_params, "rescore": gallery.rescore,
            "build_s": build, "index_mb": index_mb, "search_s": search, "searches": searches,
            "recall_at_10": recall,
            "peak_rss_mb": peak_rss_mb(), "gallery": len(gallery), "queries": len(queries)}


# --------------------------------------------------------------------------- parent
def run_child(args: argparse.Namespace, *child_args: str) -> dict:
    """One measurement in a fresh process pinned to the first ``--cores`` cores."""
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:args.cores])
    # PASSIVE: torch's OpenMP threads otherwise spin between regions and starve faiss's
    # (a small IVF-PQ trained in 15.8 s instead of 1.5 s after one torch product).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.cores), "MKL_NUM_THREADS": str(args.cores),
           "OMP_WAIT_POLICY": "PASSIVE"}
    command = ["taskset", "-c", cores, sys.executable, __file__, "--work", str(args.work),
               "--child", *child_args]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(child_args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_market(args: argparse.Namespace, dim: int) -> None:
    folder = args.work / f"market{dim}"
    if not (folder / "labels.npz").is_file():
        started = time.perf_counter()
        faiss_synthetic.write_market(folder, dim, args.distractors)
        print(f"# wrote Market+{args.distractors} features ({dim}-d) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)


def part_market(args: argparse.Namespace) -> None:
    ensure_market(args, 512)
    rows = [run_child(args, "market", "exact", args.market_index, str(args.candidates), "512"),
            run_child(args, "market", "approximate", args.market_index, str(args.candidates),
                      "512")]
    print(f"\n## Market-1501+{args.distractors} evaluation, 512-d, {args.cores} cores "
          f"(approximate: {args.market_index}, top {args.candidates}, build included)")
    print(f"{'engine':<12}{'gallery':>9}{'engine s':>10}{'with load s':>13}{'peak RSS MB':>13}"
          f"{'mAP':>8}{'Rank-1':>8}{'mINP':>8}{'cand. recall':>14}")
    for row in rows:
        recall = f"{row['candidate_recall']:.2f}%" if "candidate_recall" in row else "-"
        print(f"{row['mode']:<12}{row['gallery']:>9}{row['engine_s']:>10.2f}"
              f"{row['seconds']:>13.2f}{row['peak_rss_mb']:>13.0f}{row['mAP']:>8.2f}"
              f"{row['Rank-1']:>8.2f}{row['mINP']:>8.2f}{recall:>14}")
    exact, approx = rows
    print(f"mAP difference {approx['mAP'] - exact['mAP']:+.2f} points; approximate is "
          f"{exact['engine_s'] / approx['engine_s']:.1f}x faster (engines; "
          f"{exact['seconds'] / approx['seconds']:.1f}x with the .npy reading)", flush=True)


def part_million(args: argparse.Namespace) -> None:
    folder = args.work / "million"
    if not (folder / "query.npy").is_file() or \
            np.load(folder / "gallery.npy", mmap_mode="r").shape[0] != args.gallery:
        started = time.perf_counter()
        faiss_synthetic.write_million(folder, 512, args.gallery, args.queries)
        print(f"# wrote {args.gallery} x 512 gallery + {args.queries} queries in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n## {args.gallery:,} x 512-d gallery, {args.queries:,} queries, k=10, "
          f"{args.cores} cores (recall@10 against Flat)")
    print(f"{'index':<22}{'params':<14}{'rescore':>8}{'build s':>9}{'index MB':>10}"
          f"{'query s':>9}{'recall@10':>11}{'peak RSS MB':>13}", flush=True)
    for spec in ["Flat::", *args.million_index]:
        index_type, params, rescore = (spec.split(":") + ["", ""])[:3]
        row = run_child(args, "million", index_type, params, rescore,
                        str(1 if index_type == "Flat" else args.search_repeats))
        again = " ".join(f"{s:.2f}" for s in row["searches"][1:])
        print(f"{row['index']:<22}{row['params']:<14}{row['rescore']:>8}{row['build_s']:>9.1f}"
              f"{row['index_mb']:>10.1f}{row['search_s']:>9.2f}{row['recall_at_10']:>11.4f}"
              f"{row['peak_rss_mb']:>13.0f}" + (f"   (again: {again} s)" if again else ""),
              flush=True)


def part_partition(args: argparse.Namespace) -> None:
    """Where IVF's recall is lost: IVF-Flat (exact distances inside the probed lists, so the
    coarse partition alone) at several list counts, scanning the same fractions of the
    gallery. Recall only; the gallery is ``--gallery`` rows of the million set's recipe."""
    from reid.retrieval import faiss_index  # first: it sets OMP_WAIT_POLICY before faiss loads
    from reid.retrieval.recall import recall_at
    import faiss
    folder = args.work / f"partition{args.gallery}"
    if not (folder / "query.npy").is_file():
        faiss_synthetic.write_million(folder, 512, args.gallery, min(args.queries, 2000))
    gallery = faiss_index.prepare(np.load(folder / "gallery.npy"), "cosine")
    queries = faiss_index.prepare(np.load(folder / "query.npy"), "cosine")
    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    exact = flat.search(queries, 10)[1]
    fractions = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
    print(f"\n## IVF partition: recall@10 of IVF-Flat by lists and fraction scanned, "
          f"{len(gallery):,} x 512-d, {len(queries):,} queries, {args.train_per_list} "
          "training rows per list, exact quantizer")
    print(f"{'index':<14}{'per list':>9}" + "".join(f"{f'{f:.4g} scanned':>16}" for f in fractions))
    for nlist in args.partition_lists:
        index = faiss.index_factory(gallery.shape[1], f"IVF{nlist},Flat",
                                    faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(
            len(gallery), min(len(gallery), args.train_per_list * nlist), replace=False)
        index.train(gallery[np.sort(sample)])
        index.add(gallery)
        row = []
        for fraction in fractions:
            index.nprobe = max(1, int(nlist * fraction))
            found = index.search(queries, 10)[1]
            row.append(recall_at(found, exact, 10))
        print(f"{f'IVF{nlist},Flat':<14}{len(gallery) // nlist:>9}"
              + "".join(f"{r:>16.4f}" for r in row), flush=True)


def part_big(args: argparse.Namespace) -> None:
    ensure_market(args, 2048)
    row = run_child(args, "market", "exact", "", "0", "2048")
    size = (args.work / "market2048" / "gallery.npy").stat().st_size / 1e9
    print(f"\n## Market-1501+{args.distractors}, 2048-d gallery memory-mapped from a {size:.1f} "
          f"GB .npy, exact engine, {args.cores} cores")
    print(f"seconds {row['seconds']:.1f}, peak RSS {row['peak_rss_mb']:.0f} MB, mAP "
          f"{row['mAP']:.2f}, Rank-1 {row['Rank-1']:.2f}", flush=True)


PARTS = {"market": part_market, "million": part_million, "big": part_big,
         "partition": part_partition}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="market,million",
                        help="comma-separated: market, million, big, partition (default "
                        "market,million)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/reid-faiss-benchmark"),
                        help="where the features are written and reused")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--distractors", type=int, default=500_000,
                        help="Market distractors added to its 15,913 gallery (default 500k: "
                        "515,913 with the 2,798 of the original gallery counted in)")
    parser.add_argument("--market-index", default="bf16",
                        help="TYPE[:PARAMS] of the approximate Market evaluation (default "
                        "bf16; a faiss type such as IVF64,PQ64x4fs:nprobe=32)")
    parser.add_argument("--candidates", type=int, default=150)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--million-index", nargs="*",
                        default=["IVF10000,PQ128x4fs:nprobe=1000:20", "HNSW32:efSearch=128:1"],
                        help="TYPE:PARAMS:RESCORE rows after Flat")
    parser.add_argument("--search-repeats", type=int, default=3,
                        help="searches of the 10k queries per index after its build (the "
                        "first one is printed in the table, the others after it)")
    parser.add_argument("--partition-lists", type=int, nargs="+", default=[64, 256, 1024],
                        help="list counts of --parts partition")
    parser.add_argument("--train-per-list", type=int, default=64,
                        help="training rows per list of --parts partition (faiss: 39 to 256)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "market":
            mode, index, candidates, dim = rest
            print(json.dumps(child_market(args.work, mode, index, int(candidates), int(dim))))
        else:
            index_type, params, rescore, repeats = rest
            print(json.dumps(child_million(args.work, index_type, params,
                                           int(rescore) if rescore else None, int(repeats))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        PARTS[part](args)


if __name__ == "__main__":
    main()
