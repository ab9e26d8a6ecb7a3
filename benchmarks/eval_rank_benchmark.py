"""Evaluation engine benchmark: time and peak resident memory, exact vs the naive argsort.

Cases (each runs in a fresh subprocess, so ``ru_maxrss`` is that case's own peak):

* ``market``:  Market-1501-sized, 3,368 queries x 15,913 gallery, 751 ids (+ 3,000 distractors),
  evaluated from a precomputed float32 distance matrix (the matrix is loaded before timing);
* ``msmt``:    MSMT17-sized, 11,659 x 82,161, 3,060 ids, from 2048-d float32 features;
  the time includes computing the distances.

Methods (``--methods``; each case's methods run interleaved ``--repeats`` times, the best time
of each is reported, so a machine shared with other work hurts each method alike):

* ``exact``: this project's engine (``StreamingEvaluation`` on the matrix, ``evaluate_features``
  from features), on ``torch.get_num_threads()`` worker threads (all cores);
* ``fastreid``: FastReID 1.4's compiled Cython ``evaluate_cy`` (what its ``evaluate_rank`` runs
  with ``use_cython=True``), in FastReID's own venv (``--fastreid-python``), compiled from its
  ``rank_cy.pyx`` outside the repository: see ``benchmarks/fastreid_rank_cy.py``. Matrix
  cases only (the MSMT17-sized matrix alone is 3.8 GB, and FastReID's argsort needs 12 GB);
  its CMC, mAP and mINP are checked against ``exact``'s (max difference printed);
* ``naive``: the full distance matrix and a stable ``argsort`` of every row, as the engine did
  before; ``exact-roc`` (not run by default) adds TAR@FAR and the ROC curve to ``exact``.

``--profile`` also prints where ``exact`` spends its time (cProfile, one worker thread: the
functions with the most own time).

Data: identity centroids (random unit vectors) + isotropic Gaussian noise, L2-normalised,
6 cameras drawn uniformly, seeded; the noise level is set per case so that Rank-1 is about
85-90 %. It is generated once into ``--workdir`` (``.npy`` files) and loaded by each case.

    python benchmarks/eval_rank_benchmark.py                 # all cases
    python benchmarks/eval_rank_benchmark.py --cases market  # one size
    python benchmarks/eval_rank_benchmark.py --cases market --methods exact fastreid --repeats 5
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Case:
    name: str
    num_query: int
    num_gallery: int
    num_ids: int
    distractors: int
    dim: int
    noise: float         # per-dimension noise std is noise / sqrt(dim)
    from_features: bool  # True: time includes the distances; False: start from the matrix


CASES = {
    "market": Case("market", 3368, 15913, 751, 3000, 2048, 3.7, from_features=False),
    "msmt": Case("msmt", 11659, 82161, 3060, 0, 2048, 3.6, from_features=True),
}
SEED = 0
NUM_CAMERAS = 6
FASTREID_PYTHON = "/work/fastreid-venv/bin/python"


# --------------------------------------------------------------------------- data
def generate(case: Case, workdir: Path) -> Path:
    """Write the case's features, ids and cameras as .npy files (once); return the folder."""
    folder = workdir / f"{case.name}-{case.dim}d-noise{case.noise}-seed{SEED}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    centroids = _unit(rng.standard_normal((case.num_ids + case.distractors, case.dim),
                                          dtype=np.float32))
    q_pids = np.arange(case.num_query) % case.num_ids
    real = case.num_gallery - case.distractors
    # Distractors: one image each of an identity no query has (they are never true matches).
    g_pids = np.concatenate([np.arange(real) % case.num_ids,
                             case.num_ids + np.arange(case.distractors)])
    for split, pids in (("query", q_pids), ("gallery", g_pids)):
        feats = np.lib.format.open_memmap(folder / f"{split}_feats.npy", mode="w+",
                                          dtype=np.float32, shape=(len(pids), case.dim))
        for start in range(0, len(pids), 4096):  # chunks: no float64 temporaries of N x D
            part = pids[start:start + 4096]
            noise = rng.standard_normal((len(part), case.dim), dtype=np.float32)
            feats[start:start + len(part)] = _unit(centroids[part] + noise * (
                case.noise / np.sqrt(case.dim)))
        feats.flush()
        del feats
        np.save(folder / f"{split}_pids.npy", pids)
        np.save(folder / f"{split}_camids.npy", rng.integers(0, NUM_CAMERAS, len(pids)))
    if not case.from_features:
        q = np.load(folder / "query_feats.npy")
        g = np.load(folder / "gallery_feats.npy")
        dist = np.lib.format.open_memmap(folder / "distmat.npy", mode="w+", dtype=np.float32,
                                         shape=(len(q), len(g)))
        for start in range(0, len(q), 512):
            dist[start:start + 512] = 1.0 - q[start:start + 512] @ g.T
        dist.flush()
    (folder / "done").touch()
    return folder


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------- methods
def naive_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The engine before: stable argsort of each row (in row blocks), then cumulative sums."""
    num_g = distmat.shape[1]
    block = max(1, (1 << 20) // num_g)
    first_ranks, aps, inps = [], [], []
    for start in range(0, distmat.shape[0], block):
        rows = slice(start, start + block)
        order = np.argsort(distmat[rows], axis=1, kind="stable")
        same = g_pids[order] == q_pids[rows, None]
        keep = ~(same & (g_camids[order] == q_camids[rows, None]))
        positive = same & keep
        kept_rank = np.cumsum(keep, axis=1)
        hits = np.cumsum(positive, axis=1)
        num_pos = hits[:, -1]
        valid = num_pos > 0
        positive, kept_rank = positive[valid], kept_rank[valid]
        hits, num_pos = hits[valid], num_pos[valid]
        aps.append(np.where(positive, hits / np.maximum(kept_rank, 1), 0).sum(1) / num_pos)
        inps.append(num_pos / np.where(positive, kept_rank, 0).max(1))
        first_ranks.append(kept_rank[np.arange(len(kept_rank)), positive.argmax(1)])
    first = np.concatenate(first_ranks)
    cmc = (first[:, None] <= np.arange(1, min(max_rank, num_g) + 1)[None, :]).mean(0)
    return cmc, np.concatenate(aps), np.concatenate(inps)


def exact(case: Case, data: dict, roc: bool = False) -> dict:
    """The engine: evaluate_rank on the matrix, or evaluate_features (distances streamed)."""
    from reid.evaluation import evaluate_features
    from reid.evaluation.streaming import StreamingEvaluation

    if case.from_features:
        result = evaluate_features(data["q"], data["g"], *data["ids"], metric="cosine", roc=roc)
    else:
        with StreamingEvaluation(*data["ids"], roc=roc) as evaluation:
            evaluation.add(0, data["dist"])
            result = evaluation.result()
    out = {"cmc": result.cmc, "AP": result.all_ap, "INP": result.all_inp}
    return {**out, "TAR@FAR": result.tar_at_far} if result.roc is not None else out


def naive(case: Case, data: dict) -> dict:
    import torch

    from reid.evaluation import compute_distance

    dist = data.get("dist")
    if case.from_features:
        dist = compute_distance(torch.from_numpy(data["q"]), torch.from_numpy(data["g"]))
    cmc, ap, inp = naive_evaluate_rank(dist, *data["ids"])
    return {"cmc": cmc, "AP": ap, "INP": inp}


METHODS = {"exact": exact, "exact-roc": lambda case, data: exact(case, data, roc=True),
           "naive": naive}


def run_case(case: Case, method: str, folder: Path) -> dict:
    """Inside the worker process: load, evaluate (timed), report."""
    import torch

    q_pids, q_cams, g_pids, g_cams = [np.load(folder / f"{split}_{kind}.npy")
                                      for split in ("query", "gallery")
                                      for kind in ("pids", "camids")]
    data = {"ids": (q_pids, g_pids, q_cams, g_cams)}
    if case.from_features:
        data["q"] = np.load(folder / "query_feats.npy")
        data["g"] = np.load(folder / "gallery_feats.npy")
    else:
        data["dist"] = np.load(folder / "distmat.npy")
    rss_before = _current_rss_mb()
    cpu = time.process_time()
    started = time.perf_counter()
    out = METHODS[method](case, data)
    elapsed = time.perf_counter() - started
    result = {"case": case.name, "method": method, "seconds": elapsed,
              "cpu_seconds": time.process_time() - cpu,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rss_before_mb": rss_before, "threads": torch.get_num_threads(),
              "rank1": float(out["cmc"][0]) * 100, "mAP": float(np.mean(out["AP"])) * 100,
              "mINP": float(np.mean(out["INP"])) * 100}
    if "TAR@FAR" in out:
        result["tar_at_far"] = {f"{far:g}": tar * 100 for far, tar in out["TAR@FAR"].items()}
    for name in ("cmc", "AP", "INP"):
        np.save(folder / f"result-{method}.{name}.npy", np.asarray(out[name]))
    return result


def profile_exact(folder: Path, top: int = 14) -> str:
    """cProfile of ``exact`` on one worker thread (a pool's threads are invisible to cProfile)."""
    from reid.evaluation.streaming import StreamingEvaluation

    ids = [np.load(folder / f"{split}_{kind}.npy") for split in ("query", "gallery")
           for kind in ("pids", "camids")]
    dist = np.load(folder / "distmat.npy")
    profiler = cProfile.Profile()
    with StreamingEvaluation(ids[0], ids[2], ids[1], ids[3], workers=1) as evaluation:
        profiler.enable()
        evaluation.add(0, dist)
        evaluation.result()
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def _current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- driver
def spawn(case: Case, method: str, folder: Path, fastreid_python: str) -> dict:
    if method == "fastreid":
        cmd = [fastreid_python, str(ROOT / "benchmarks" / "fastreid_rank_cy.py"), str(folder),
               str(folder.parent / "fastreid-rank-cy"), str(folder / "result-fastreid")]
    else:
        cmd = [sys.executable, __file__, "--worker", case.name, method, str(folder)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"case": case.name, "method": method, "rss_before_mb": float("nan"),
            "threads": 1, **result}


def differences(folder: Path, method: str, reference: str = "exact") -> dict:
    """Largest absolute differences of CMC, per-query AP / INP, mAP and mINP between methods."""
    a, b = ({name: np.load(folder / f"result-{m}.{name}.npy").astype(np.float64)
             for name in ("cmc", "AP", "INP")} for m in (method, reference))
    return {"CMC": np.abs(a["cmc"] - b["cmc"]).max(), "AP": np.abs(a["AP"] - b["AP"]).max(),
            "INP": np.abs(a["INP"] - b["INP"]).max(),
            "mAP": abs(a["AP"].mean() - b["AP"].mean()),
            "mINP": abs(a["INP"].mean() - b["INP"].mean())}


def tie_explained(folder: Path, method: str = "fastreid") -> tuple[int, int]:
    """Queries whose AP differs from exact's by > 1e-6, and how many of them have a tie."""
    dist = np.load(folder / "distmat.npy", mmap_mode="r")
    q_pids, q_cams, g_pids, g_cams = [np.load(folder / f"{split}_{kind}.npy")
                                      for split in ("query", "gallery")
                                      for kind in ("pids", "camids")]
    valid = np.nonzero([((g_pids == p) & (g_cams != c)).any() for p, c in zip(q_pids, q_cams)])[0]
    ap, ref = (np.load(folder / f"result-{m}.AP.npy") for m in (method, "exact"))
    differ = valid[np.abs(ap - ref) > 1e-6]
    tied = 0
    for q in differ:
        kept = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        positive = kept & (g_pids == q_pids[q])
        values, counts = np.unique(dist[q][kept], return_counts=True)
        tied += bool(np.isin(dist[q][positive], values[counts > 1]).any())
    return len(differ), tied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--methods", nargs="+", default=["exact", "fastreid", "naive"],
                        choices=[*METHODS, "fastreid"],
                        help="exact-roc: exact plus TAR@FAR and the ROC")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of each method; the best time is reported")
    parser.add_argument("--fastreid-python", default=FASTREID_PYTHON,
                        help="FastReID 1.4's interpreter (its venv, with Cython installed)")
    parser.add_argument("--profile", action="store_true", help="cProfile of exact (1 thread)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "reid-eval-bench"))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, method, folder = args.worker
        print(json.dumps(run_case(CASES[name], method, Path(folder))))
        return

    print(f"cpu cores: {os.cpu_count()}, load average before: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    for name in args.cases:
        case = CASES[name]
        started = time.perf_counter()
        folder = generate(case, Path(args.workdir))
        print(f"{name}: data ready in {time.perf_counter() - started:.1f} s ({folder})", flush=True)
        methods = [m for m in args.methods if m != "fastreid" or not case.from_features]
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for method in methods:
                result = spawn(case, method, folder, args.fastreid_python)
                print(f"  run {repeat + 1} {method}: {result['seconds']:.3f} s "
                      f"(CPU {result['cpu_seconds']:.3f} s), peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB", flush=True)
                if method not in best or result["seconds"] < best[method]["seconds"]:
                    best[method] = result
        rows += best.values()
        if args.profile and not case.from_features:
            print(profile_exact(folder))
        _print_comparisons(name, folder, best)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    _print_table(rows, args.repeats)


def _print_comparisons(name: str, folder: Path, best: dict[str, dict]) -> None:
    for method in ("naive", "fastreid"):
        if "exact" in best and method in best:
            diff = differences(folder, method)
            print(f"{name}: {method} vs exact, largest differences: "
                  + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))
    if "fastreid" in best:
        # FastReID sorts with numpy's default (unstable) argsort: a positive that ties with
        # another item may land on either side of it, which moves that query's AP / INP.
        print(f"{name}: FastReID's Cython module: {best['fastreid']['module']}")
        if "exact" in best:
            differ, tied = tie_explained(folder)
            print(f"{name}: per-query AP differs by > 1e-6 on {differ} queries; {tied} of them "
                  "have a positive at exactly the distance of another kept item")
    for method in ("fastreid", "naive"):
        if "exact" in best and method in best:
            print(f"{name}: exact is {best[method]['seconds'] / best['exact']['seconds']:.1f}x "
                  f"faster than {method} (best of each; CPU time of those runs: "
                  f"{best[method]['cpu_seconds'] / best['exact']['cpu_seconds']:.1f}x)")


def _print_table(rows: list[dict], repeats: int) -> None:
    header = (f"{'case':<7} {'method':<9} {'threads':>7} {'best s':>8} {'its CPU s':>9}"
              f" {'peak RSS MB':>12}"
              f" {'Rank-1':>7} {'mAP':>8} {'mINP':>8}")
    print(f"best of {repeats} interleaved runs")
    print(header)
    print("-" * len(header))
    for r in rows:
        tar = "  TAR@FAR " + ", ".join(f"{k}: {v:.2f}" for k, v in r["tar_at_far"].items()) \
            if "tar_at_far" in r else ""
        print(f"{r['case']:<7} {r['method']:<9} {r['threads']:>7} {r['seconds']:>8.3f} "
              f"{r['cpu_seconds']:>9.3f} {r['peak_rss_mb']:>12.0f} {r['rank1']:>7.3f} "
              f"{r['mAP']:>8.4f} {r['mINP']:>8.4f}{tar}")


if __name__ == "__main__":
    main()
