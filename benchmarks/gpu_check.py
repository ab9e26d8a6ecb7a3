"""One-shot check of the CUDA paths, with throughput figures (run on a GPU machine).

    python benchmarks/gpu_check.py [--quick] [--json OUT.json]

1. Retrieval on the GPU gives the CPU's numbers: ``evaluate_features`` (CMC, mAP, mINP, AP),
   ``rerank_distance`` and average query expansion, GPU vs CPU on the same small problem.
2. Retrieval throughput on the GPU: Market- and MSMT17-sized problems from 2048-d features
   (plain, re-ranked, AQE), as ``benchmarks/eval_rank_benchmark.py`` / ``rerank_benchmark.py``.
3. Training through ``reid.engine.Trainer`` wrapped in DistributedDataParallel over NCCL (one
   process, one GPU: the NCCL group, DDP's gradient all-reduce and AMP's GradScaler run for
   real; several ranks are covered on CPU by tests/test_ddp.py): BoT-R50 at 256x128, images/s
   in float32 and with AMP.
4. Feature-extraction throughput of BoT-R50 at 256x128, float32 and AMP.

Every section prints as it goes and failures are reported, not fatal, so one broken path
does not hide the others.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from rerank_benchmark import PROBLEMS, synthetic_features  # noqa: E402

from reid.config import load_config  # noqa: E402
from reid.engine.trainer import Trainer  # noqa: E402
from reid.evaluation.features import evaluate_features  # noqa: E402
from reid.evaluation.options import AqeOptions, RerankOptions  # noqa: E402
from reid.evaluation.query_expansion import average_query_expansion  # noqa: E402
from reid.evaluation.rerank import rerank_distance  # noqa: E402
from reid.modeling import build_model  # noqa: E402
from reid.solver import build_lr_scheduler, build_optimizer  # noqa: E402

RERANK = dict(k1=20, k2=6, lambda_value=0.3)
AQE = dict(alpha=3.0, qe_time=1, qe_k=5)
RESULTS: dict[str, object] = {}


def section(name):
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n== {name}", flush=True)
            started = time.perf_counter()
            try:
                RESULTS[name] = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - report and go on to the next path
                traceback.print_exc()
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"   ({time.perf_counter() - started:.1f} s) {RESULTS[name]}", flush=True)
        return run
    return wrap


def synchronized_time(fn):
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - started


def small_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    num_ids, dim = 150, 128
    q_pids, g_pids = rng.integers(0, num_ids, 600), rng.integers(0, num_ids, 2400)
    centres = rng.standard_normal((num_ids, dim)).astype(np.float32)
    q = centres[q_pids] + 2.0 * rng.standard_normal((600, dim)).astype(np.float32)
    g = centres[g_pids] + 2.0 * rng.standard_normal((2400, dim)).astype(np.float32)
    return q, g, q_pids, g_pids, rng.integers(0, 6, 600), rng.integers(0, 6, 2400)


@section("gpu equals cpu")
def gpu_equals_cpu():
    q, g, qp, gp, qc, gc = small_problem()
    out = {}
    for name, extra in (("plain", {}), ("rerank", {"rerank": RerankOptions(**RERANK)}),
                        ("aqe", {"aqe": AqeOptions(**AQE)})):
        cpu = evaluate_features(q, g, qp, gp, qc, gc, device="cpu", **extra)
        gpu = evaluate_features(q, g, qp, gp, qc, gc, device="cuda", **extra)
        out[name] = {"mAP cpu": round(cpu.mAP * 100, 4),
                     "mAP gpu": round(gpu.mAP * 100, 4),
                     "max |AP diff|": float(np.abs(cpu.all_ap - gpu.all_ap).max()),
                     "max |cmc diff|": float(np.abs(cpu.cmc - gpu.cmc).max())}
    dense_cpu = rerank_distance(q, g, device="cpu", **RERANK)
    dense_gpu = rerank_distance(q, g, device="cuda", **RERANK)
    out["rerank max |dist diff|"] = float(np.abs(dense_cpu - dense_gpu).max())
    eq_cpu = average_query_expansion(q, g, device="cpu", **AQE)
    eq_gpu = average_query_expansion(q, g, device="cuda", **AQE)
    out["aqe max |feat diff|"] = float(max(np.abs(a - b).max() for a, b in zip(eq_cpu, eq_gpu)))
    return out


@section("gpu retrieval throughput")
def retrieval_throughput(quick: bool):
    out = {}
    cases = [("market", PROBLEMS["market"], 3.7)] + ([] if quick else
                                                      [("msmt", PROBLEMS["msmt"], 3.55)])
    for name, problem, noise in cases:
        f = synthetic_features(problem, noise, 0)
        args = (f.q, f.g, f.q_pids, f.g_pids, f.q_cams, f.g_cams)
        evaluate_features(f.q[:64], f.g[:256], f.q_pids[:64], f.g_pids[:256], f.q_cams[:64],
                          f.g_cams[:256], device="cuda")  # warm-up (CUDA context, kernels)
        for variant, extra in (("plain", {}), ("rerank", {"rerank": RerankOptions(**RERANK)}),
                               ("aqe", {"aqe": AqeOptions(**AQE)})):
            torch.cuda.reset_peak_memory_stats()
            res, secs = synchronized_time(lambda: evaluate_features(*args, device="cuda",
                                                                    **extra))
            out[f"{name} {variant}"] = {
                "s": round(secs, 2), "Rank-1": round(float(res.cmc[0]) * 100, 2),
                "mAP": round(res.mAP * 100, 2),
                "peak GPU GB": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
            print(f"   {name} {variant}: {out[f'{name} {variant}']}", flush=True)
    return out


def bot_r50(batch: int):
    cfg = load_config(ROOT / "params/Market1501/bagtricks_R50.yml",
                      ["MODEL.HEADS.NUM_CLASSES", "751", "MODEL.BACKBONE.PRETRAIN", "False",
                       "SOLVER.IMS_PER_BATCH", str(batch)])
    return cfg, build_model(cfg)


def random_batches(count: int, batch: int, num_classes: int, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for _ in range(count):
        pids = torch.randint(0, num_classes, (batch // 4,), generator=gen).repeat_interleave(4)
        out.append({"images": (torch.rand(batch, 3, 256, 128, generator=gen) * 255).to(device),
                    "targets": pids.to(device), "camids": torch.zeros(batch, dtype=torch.long,
                                                                       device=device)})
    return out


@section("ddp nccl training throughput")
def training_throughput(quick: bool):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    if not dist.is_initialized():
        dist.init_process_group("nccl", world_size=1, rank=0)
    device = torch.device("cuda", 0)
    out = {"backend": dist.get_backend()}
    steps, warmup = (10, 3) if quick else (30, 5)
    for batch, amp in ((64, False), (64, True), (256, False), (256, True)):
        cfg, model = bot_r50(batch)
        model = DistributedDataParallel(model.to(device), device_ids=[0])
        optimizer = build_optimizer(cfg, model)
        batches = random_batches(warmup + steps, batch, 751, device)
        scheduler = build_lr_scheduler(cfg, optimizer, len(batches))
        trainer = Trainer(model, batches, optimizer, scheduler, max_epoch=1, device=device,
                          amp=amp)
        model.train()
        for b in batches[:warmup]:
            trainer.run_step(b)
        _, secs = synchronized_time(lambda: [trainer.run_step(b) for b in batches[warmup:]])
        key = f"batch {batch} {'amp' if amp else 'fp32'}"
        out[key] = {"images/s": round(steps * batch / secs, 1), "amp active": trainer.amp,
                    "last total_loss": round(trainer.metrics["total_loss"], 4),
                    "peak GPU GB": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        print(f"   {key}: {out[key]}", flush=True)
        del trainer, model, optimizer, batches
        torch.cuda.empty_cache()
    dist.destroy_process_group()
    return out


@section("inference throughput")
def inference_throughput(quick: bool):
    _, model = bot_r50(256)
    model = model.cuda().eval()
    images = torch.rand(256, 3, 256, 128, device="cuda") * 255
    out = {}
    for amp in (False, True):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            for _ in range(3):
                model(images)
            reps = 5 if quick else 20
            feats, secs = synchronized_time(lambda: [model(images) for _ in range(reps)])
        out["amp" if amp else "fp32"] = {"images/s": round(reps * 256 / secs, 1),
                                         "feature": list(feats[-1].shape)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer steps")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--skip", nargs="*", default=[], choices=["equal", "train", "infer",
                                                                  "retrieval"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
          f"{os.cpu_count()} CPU cores", flush=True)
    RESULTS["device"] = torch.cuda.get_device_name(0)
    for key, check in (("equal", gpu_equals_cpu), ("train", training_throughput),
                       ("infer", inference_throughput), ("retrieval", retrieval_throughput)):
        if key not in args.skip:
            check() if key == "equal" else check(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=2))
    failed = [name for name, value in RESULTS.items()
              if isinstance(value, dict) and "error" in value]
    print(f"\nfailed sections: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
