"""Feature extraction throughput (img/s) on the CPU: this project and FastReID 1.4, side by side.

For each recipe (BoT-R18 at 128x64, BoT-R50 at 256x128; random weights, eval mode, batch 128),
the same synthetic images (``torch.rand`` from one seed: both venvs run torch 2.14.1, so the
tensors are identical) go through

* ``fastreid``: FastReID 1.4's own model, built by its own config loader from
  ``benchmarks/fastreid_recipes/`` in its venv (``--fastreid-python``; see
  ``benchmarks/fastreid_parity.py`` for how that venv was made), called as its evaluator
  calls it: ``model({"images": batch})`` under ``torch.no_grad()``;
* ``ours-before``: this project's model from the params/ recipe, called as ``extract_features``
  called it before (plain float32 tensors, ``torch.inference_mode``);
* ``ours``: ``reid.evaluation.extract.extract_features`` as it is now (on the CPU: a copy of
  the model with the backbone's BatchNorms folded into its convolutions, channels-last), with
  ``bf16=False`` (float32) and ``ours-bf16`` with ``bf16=True`` (bfloat16 autocast, TEST.BF16),
  which needs a CPU with native bf16 (``lscpu``: ``avx512_bf16`` / ``amx_bf16``).

Every method runs in its own process, the methods interleaved ``--repeats`` times; in each
process one batch warms up, then one pass over ``--batches`` batches is timed (for ``ours``
one ``extract_features`` call, its model preparation included); the best pass over repeats is
reported (wall img/s), beside images per CPU second of the process and its loader workers
(steadier than the wall time on a machine shared with other work). Features of our variants
are compared with ``ours-before``'s (smallest cosine over the batch).

The ``-e2e`` methods (``--end-to-end``, BoT-R18 only: the CPU recipe) time the whole test-set
extraction from a synthetic Market-layout folder (written once into the workdir by this
project's generator): JPEG decoding, resizing, batching with 4 loader workers (FastReID's
test-loader default, given to ours too), the model. ``fastreid-e2e`` is FastReID's
``build_reid_test_loader`` + its evaluator's loop (``model(inputs)`` under ``no_grad``), with
the run-time shims of ``benchmarks/fastreid_lockstep.py`` (``torch._six``) and its
``DataLoaderX`` (a CUDA-stream prefetch thread) replaced by the ``DataLoader`` it derives from,
as ``benchmarks/fastreid_train.py`` does; ``ours-e2e`` / ``ours-e2e-bf16`` are
``build_test_loader`` + ``extract_features``, with the test set's Rank-1 / mAP (random
weights: only how far bf16 moves them means something).

    python benchmarks/inference_throughput.py                      # both recipes
    python benchmarks/inference_throughput.py --recipes BoT-R18-128x64 --repeats 5
    python benchmarks/inference_throughput.py --end-to-end       # + the JPEG-folder runs
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FASTREID_PYTHON = "/work/fastreid-venv/bin/python"
BATCH = 128
SEED = 16
# name: (FastReID config under benchmarks/fastreid_recipes/, params/ recipe, input H x W)
RECIPES = {
    "BoT-R18-128x64": ("bagtricks_R18-128x64.yml", "params/bagtricks_R18-128x64.yml", (128, 64)),
    "BoT-R50-256x128": ("Market1501/bagtricks_R50.yml", "params/Market1501/bagtricks_R50.yml",
                        (256, 128)),
}
METHODS = ("fastreid", "ours-before", "ours", "ours-bf16")
END_TO_END = ("fastreid-e2e", "ours-e2e", "ours-e2e-bf16")
E2E_RECIPE = "BoT-R18-128x64"
LOADER_WORKERS = 4  # FastReID's build_reid_test_loader default
OVERRIDES = ("MODEL.HEADS.NUM_CLASSES", "100", "MODEL.BACKBONE.PRETRAIN", "False")


def images(size: tuple[int, int]) -> torch.Tensor:
    """The seeded batch, float 0..255 (the models normalise it themselves)."""
    return 255.0 * torch.rand((BATCH, 3, *size), generator=torch.Generator().manual_seed(SEED))


# --------------------------------------------------------------------------- workers
def fastreid_step(recipe: str):
    from fastreid.config import get_cfg
    from fastreid.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(ROOT / "benchmarks" / "fastreid_recipes" / RECIPES[recipe][0]))
    cfg.merge_from_list([*OVERRIDES, "MODEL.DEVICE", "cpu"])
    cfg.freeze()
    model = build_model(cfg).eval()

    def run(batches: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model({"images": batch}) for batch in batches])
    run.cfg, run.model = cfg, model
    return run


def ours_step(recipe: str, method: str):
    sys.path.insert(0, str(ROOT))
    from reid.config import load_config
    from reid.evaluation.extract import extract_features
    from reid.inference import build_inference_model

    torch.manual_seed(0)
    model = build_inference_model(load_config(ROOT / RECIPES[recipe][1], OVERRIDES))

    def before(batches: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(batch) for batch in batches])

    def extract(batches: list[torch.Tensor]) -> torch.Tensor:
        # One extraction over the batches: its one-time model preparation (the BatchNorm
        # folding's trace) is inside the timing, as it is in a real evaluation.
        loader = [{"images": batch, "targets": torch.zeros(len(batch)),
                   "camids": torch.zeros(len(batch))} for batch in batches]
        return extract_features(model, loader, "cpu", bf16=method == "ours-bf16")[0]
    return before if method == "ours-before" else extract


def fastreid_end_to_end(recipe: str, folder: Path):
    os.environ["FASTREID_DATASETS"] = str(folder / "SyntheticMarket1501")  # read at import
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fastreid_lockstep import fastreid_shims

    fastreid_shims()
    import fastreid.data.build as fastreid_build

    class PlainLoader(torch.utils.data.DataLoader):
        """DataLoaderX's signature, without its CUDA-stream prefetch thread."""

        def __init__(self, local_rank, **kwargs):
            super().__init__(**kwargs)

    fastreid_build.DataLoaderX = PlainLoader
    step = fastreid_step(recipe)
    cfg = step.cfg
    loader, _ = fastreid_build.build_reid_test_loader(cfg, dataset_name="Market1501",
                                                      num_workers=LOADER_WORKERS)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([step.model(inputs) for inputs in loader])
    return run


def ours_end_to_end(recipe: str, method: str, folder: Path):
    sys.path.insert(0, str(ROOT))
    from reid.config import load_config
    from reid.data.build import build_test_loader
    from reid.evaluation.extract import extract_features
    from reid.inference import build_inference_model

    cfg = load_config(ROOT / RECIPES[recipe][1], [
        *OVERRIDES, "DATASETS.ROOT", str(folder), "DATASETS.NAMES", '("SyntheticMarket1501",)',
        "DATASETS.TESTS", '("SyntheticMarket1501",)', "DATALOADER.NUM_WORKERS",
        str(LOADER_WORKERS), "TEST.IMS_PER_BATCH", str(BATCH)])
    torch.manual_seed(0)
    model = build_inference_model(cfg)

    def run() -> torch.Tensor:
        loader, num_query = build_test_loader(cfg, "SyntheticMarket1501")
        feats, pids, camids = extract_features(model, loader, "cpu",
                                               bf16=method == "ours-e2e-bf16")
        run.labels = (pids, camids, num_query)  # evaluated after the timing
        return feats
    return run


def rank_metrics(feats: torch.Tensor, pids, camids, num_query: int) -> dict:
    """Rank-1 / mAP (percent) of the test set: how much bf16 moves them (random weights)."""
    from reid.evaluation import evaluate_features

    result = evaluate_features(feats[:num_query], feats[num_query:], pids[:num_query],
                               pids[num_query:], camids[:num_query], camids[num_query:])
    return {"Rank-1": float(result.cmc[0]) * 100, "mAP": result.mAP * 100}


def run_end_to_end(recipe: str, method: str, folder: Path, out: Path) -> dict:
    run = (fastreid_end_to_end(recipe, folder) if method == "fastreid-e2e"
           else ours_end_to_end(recipe, method, folder))
    cpu, started = cpu_seconds(), time.perf_counter()
    features = run()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    torch.save(features[:BATCH].float(), out)
    return {"recipe": recipe, "method": method, "img_s": len(features) / elapsed,
            "img_cpu_s": len(features) / cpu,
            "images": len(features), "threads": torch.get_num_threads(),
            **(rank_metrics(features, *run.labels) if hasattr(run, "labels") else {})}


def synthetic_folder(workdir: Path) -> Path:
    """A synthetic Market-layout folder (this project's generator, defaults), written once."""
    root = workdir / "synthetic"
    if not (root / "SyntheticMarket1501" / "generator.json").exists():
        sys.path.insert(0, str(ROOT))
        from reid.data.synthetic import generate_synthetic_market

        generate_synthetic_market(root)
    return root


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the loader workers), user + system:
    on a machine shared with other work it varies far less than the wall time."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN)))


def run_worker(recipe: str, method: str, batches: int, out: Path) -> dict:
    run = fastreid_step(recipe) if method == "fastreid" else ours_step(recipe, method)
    batch = images(RECIPES[recipe][2])
    run([batch])  # warm-up: first-call allocations, oneDNN primitive creation
    cpu, started = cpu_seconds(), time.perf_counter()
    features = run([batch] * batches)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    torch.save(features[:BATCH].float(), out)
    return {"recipe": recipe, "method": method, "img_s": BATCH * batches / elapsed,
            "img_cpu_s": BATCH * batches / cpu,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- driver
def spawn(recipe: str, method: str, args, out: Path) -> dict:
    python = args.fastreid_python if method.startswith("fastreid") else sys.executable
    cmd = [python, __file__, "--worker", recipe, method, str(out), "--batches", str(args.batches),
           "--workdir", args.workdir]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per process")
    parser.add_argument("--end-to-end", action="store_true",
                        help=f"also the {E2E_RECIPE} extraction from a JPEG folder")
    parser.add_argument("--fastreid-python", default=FASTREID_PYTHON)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                          "reid-inference-bench"))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        recipe, method, out = args.worker
        if method in END_TO_END:
            result = run_end_to_end(recipe, method, Path(args.workdir) / "synthetic", Path(out))
        else:
            result = run_worker(recipe, method, args.batches, Path(out))
        print(json.dumps(result))
        return

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"cpu cores: {os.cpu_count()}, flags: {cpu_flags()}, load average before: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.end_to_end:
        synthetic_folder(workdir)
    table = []
    for recipe in args.recipes:
        methods = list(args.methods)
        if args.end_to_end and recipe == E2E_RECIPE:
            methods += END_TO_END
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for method in methods:
                result = spawn(recipe, method, args, workdir / f"{recipe}-{method}.pt")
                print(f"  {recipe} run {repeat + 1} {method}: {result['img_s']:.1f} img/s, "
                      f"{result['img_cpu_s']:.1f} img per CPU second", flush=True)
                cpu_best = max(result["img_cpu_s"], best.get(method, {}).get("img_cpu_s", 0))
                if result["img_s"] > best.get(method, {"img_s": 0})["img_s"]:
                    best[method] = result
                best[method]["img_cpu_s"] = cpu_best  # the best of each measure
        for method, result in best.items():
            reference = workdir / (f"{recipe}-ours-e2e.pt" if method in END_TO_END
                                   else f"{recipe}-ours-before.pt")
            features = workdir / f"{recipe}-{method}.pt"
            if method.startswith("ours") and reference.exists() and features != reference:
                result["cosine"] = min_cosine(torch.load(features), torch.load(reference))
            table.append(result)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"best of {args.repeats} interleaved passes over {args.batches} batches of {BATCH}")
    print(f"{'recipe':<16} {'method':<13} {'threads':>7} {'img/s':>8} {'vs FastReID':>11} "
          f"{'img/CPU-s':>9} {'vs FastReID':>11} "
          f"{'min cos vs ours-before / ours-e2e':>33}")
    for r in table:
        peer = "fastreid-e2e" if r["method"] in END_TO_END else "fastreid"
        base = next((t for t in table if t["recipe"] == r["recipe"] and t["method"] == peer),
                    None)
        ratio = f"{r['img_s'] / base['img_s']:.2f}x" if base else "-"
        cpu_ratio = f"{r['img_cpu_s'] / base['img_cpu_s']:.2f}x" if base else "-"
        cosine = f"{r['cosine']:.7f}" if "cosine" in r else "-"
        metrics = (f"  Rank-1 {r['Rank-1']:.2f} mAP {r['mAP']:.3f} (random weights)"
                   if "mAP" in r else "")
        print(f"{r['recipe']:<16} {r['method']:<13} {r['threads']:>7} {r['img_s']:>8.1f} "
              f"{ratio:>11} {r['img_cpu_s']:>9.1f} {cpu_ratio:>11} {cosine:>33}{metrics}")


if __name__ == "__main__":
    main()
