"""Training throughput on the CPU: float32 against bfloat16 autocast (SOLVER.BF16_ENABLED).

BoT-R18 at 128x64 (params/bagtricks_R18-128x64.yml, random init, 751 classes), batch 64 of
random images (the same tensors for both precisions, one seed), Adam as the recipe sets it.
Each precision runs in its own process through ``reid.engine.trainer.Trainer.run_step`` (the
training step itself: forward under autocast, backward, optimizer and scheduler steps, the
losses read back): ``--warmup`` steps, then ``--steps`` timed steps; it prints wall img/s,
images per CPU second of the process (steadier on a shared machine) and the total loss after
the warm-up + timed steps (same start, same data: how far bf16 moves training).
bfloat16 is only fast on a CPU with native bf16 (``lscpu``: ``avx512_bf16`` / ``amx_bf16``).

    python benchmarks/precision_throughput.py --steps 20
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "params" / "bagtricks_R18-128x64.yml"
BATCH, CLASSES, SEED = 64, 751, 0


def measure(precision: str, warmup: int, steps: int) -> dict:
    """One precision's run (in this process)."""
    import torch

    from reid.config import load_config
    from reid.engine.trainer import Trainer
    from reid.evaluation.extract import cpu_has_bf16
    from reid.modeling import build_model
    from reid.solver import build_lr_scheduler, build_optimizer

    cfg = load_config(str(RECIPE), ["MODEL.HEADS.NUM_CLASSES", str(CLASSES),
                                    "MODEL.DEVICE", "cpu"])
    torch.manual_seed(SEED)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch=100)
    generator = torch.Generator().manual_seed(SEED)
    batches = [{"images": torch.rand(BATCH, 3, 128, 64, generator=generator) * 255,
                "targets": torch.randint(CLASSES, (BATCH,), generator=generator)}
               for _ in range(4)]
    bf16 = precision == "bf16"
    trainer = Trainer(model, batches, optimizer, scheduler, max_epoch=1, device="cpu",
                      amp=bf16, amp_dtype=torch.bfloat16)
    model.train()
    for step in range(warmup):
        trainer.run_step(batches[step % len(batches)])
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        trainer.run_step(batches[(warmup + step) % len(batches)])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"precision": precision, "img_per_s": BATCH * steps / wall,
            "img_per_cpu_s": BATCH * steps / cpu, "loss": trainer.metrics["total_loss"],
            "steps": warmup + steps, "native_bf16": cpu_has_bf16(),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--one", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.warmup, args.steps)))
        return
    rows = []
    for precision in ("fp32", "bf16"):
        done = subprocess.run([sys.executable, __file__, "--one", precision, "--steps",
                               str(args.steps), "--warmup", str(args.warmup)],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"BoT-R18 128x64, batch {BATCH}, {rows[0]['threads']} threads, native bf16: "
          f"{rows[0]['native_bf16']}; loss after {rows[0]['steps']} steps")
    print(f"{'precision':<10} {'img/s':>8} {'img/cpu-s':>10} {'loss':>10}")
    for row in rows:
        print(f"{row['precision']:<10} {row['img_per_s']:8.1f} {row['img_per_cpu_s']:10.1f} "
              f"{row['loss']:10.4f}")
    print(f"bf16 / fp32 wall speed-up: {rows[1]['img_per_s'] / rows[0]['img_per_s']:.2f}x")


if __name__ == "__main__":
    main()
