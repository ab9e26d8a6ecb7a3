"""Training throughput (img/s): this project and FastReID 1.4, side by side in one run.

The same recipe for both: BoT-R18 at 128x64, batch 64, P x K with K = 4, from scratch
(``params/bagtricks_R18-128x64.yml`` here, ``benchmarks/fastreid_recipes/bagtricks_R18-128x64.yml``
for FastReID, in its own venv: ``--fastreid-python``, see ``benchmarks/fastreid_parity.py``).
Every measurement runs in its own process; the sides and variants are interleaved, the whole
round repeated ``--repeats`` times, each round printed; warm-up steps are never timed.

* ``step`` (the model step alone): a few batches of random images (float 0..255, one seed; both
  venvs run torch 2.14.1, so the tensors are identical) already in memory; timed: forward,
  losses, backward, optimizer step. Ours is ``reid.engine.trainer.Trainer.run_step`` (as
  ``benchmarks/precision_throughput.py`` runs it; the LR scheduler's step and the losses read
  back included), FastReID's its ``SimpleTrainer.run_step`` (the losses read back in
  ``_write_metrics`` included) fed the same batches.
* ``e2e`` (end to end): each project's real training loop over a synthetic Market-layout folder
  written once by ``reid.data.synthetic.generate_synthetic_market`` into ``--workdir``: JPEG
  decoding, augmentation, the P x K sampler and the recipe's 8 loader workers included. Ours is
  ``Trainer.train`` over ``build_train_loader`` (epochs of ``len(loader)`` iterations, its
  persistent workers restarting each epoch's pass), FastReID's ``TrainerBase.train`` of its
  ``DefaultTrainer`` (its infinite sampler) with the run-time workarounds of
  ``benchmarks/fastreid_train.py`` (``DataLoaderX`` without CUDA streams on the CPU, the plain
  parameter list instead of its contiguous buffers). Only each trainer's LR hook and a timing
  hook run (no evaluation, checkpoint or writer); the clock starts after ``--e2e-warmup``
  iterations, by which time the loader's prefetch queue is full.

``--variants`` are ours measured on their own (each a ``+``-joined list): ``fp32`` (the recipe),
``bf16`` (SOLVER.BF16_ENABLED), ``cl`` (channels_last model and images), ``foreach`` / ``fused``
(Adam's implementations), ``tN`` (N torch threads), ``wN`` (N loader workers, e2e), ``nopersist`` (no persistent workers,
e2e). ``loader`` times each project's training loader alone (``--steps`` batches after
``--warmup``, ``--loader-workers`` workers, 0: in the measuring process, whose CPU time is then
the decoding and augmentation cost). img/CPU-s (step mode) is images per CPU second of the process: steadier than the wall
time on a machine shared with other work.

On CUDA (``torch.cuda.is_available()``) the default recipe is BoT-R50 at 256x128 (images of that
size, ``--workdir``/synthetic-256x128), batches 64 and 256, ours under bf16 autocast (FastReID
under its AMP: float16, GradScaler); it also prints the GPU's utilisation (sampled while timing)
and the MFU: model FLOPs of one training step per image (forward + backward, counted by
``torch.utils.flop_counter.FlopCounterMode``) x img/s / the GPU's dense bf16 peak (``PEAK_BF16``).

    python benchmarks/train_throughput.py                       # CPU: step + e2e, 2 repeats
    python benchmarks/train_throughput.py --modes step --variants fp32 bf16 cl bf16+cl fused
    python benchmarks/train_throughput.py --modes e2e --variants fp32 w2 w4 nopersist
    python benchmarks/train_throughput.py --modes loader --steps 10   # the loaders alone
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from inference_throughput import FASTREID_PYTHON, RECIPES, cpu_flags  # noqa: E402

SEED = 16
STEP_CLASSES = 751
TRAIN_IDS_CUDA = 300
# Dense bf16 tensor throughput (FLOP/s) by a substring of torch.cuda.get_device_name (first hit).
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


# --------------------------------------------------------------------------- helpers
def synthetic_root(workdir: Path, size: tuple[int, int]) -> Path:
    """The folder holding SyntheticMarket1501 at ``size`` (written once, by our generator):
    the generator's defaults (100 training identities, 1,200 images) on the CPU, 300
    identities (3,600 images: 14 iterations per epoch at batch 256) and a small test split
    (never evaluated here) on CUDA: about a minute of generation."""
    ids = TRAIN_IDS_CUDA if torch.cuda.is_available() else 100
    root = workdir / f"synthetic-{size[0]}x{size[1]}-{ids}ids"
    if not (root / "SyntheticMarket1501" / "generator.json").exists():
        sys.path.insert(0, str(ROOT))
        from reid.data.synthetic import generate_synthetic_market

        small_test = {"num_test_ids": 10, "num_distractors": 10, "num_junk": 10}
        generate_synthetic_market(root, size=size, num_train_ids=ids,
                                  **(small_test if ids != 100 else {}))
    return root


def random_batches(size: tuple[int, int], batch: int, device: str, count: int = 4) -> list:
    generator = torch.Generator().manual_seed(SEED)
    return [{"images": (torch.rand(batch, 3, *size, generator=generator) * 255).to(device),
             "targets": torch.randint(STEP_CLASSES, (batch,), generator=generator).to(device)}
            for _ in range(count)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bf16(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


class UtilisationSampler:
    """The GPU's utilisation (percent) sampled every ``period`` s while in the ``with`` block:
    ``torch.cuda.utilization`` (NVML) where it works, else ``nvidia-smi``."""

    def __init__(self, device: str, period: float = 0.5) -> None:
        self.enabled, self.period, self.samples = device == "cuda", period, []
        self._stop = threading.Event()

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # no pynvml: ask nvidia-smi
            index = str(torch.cuda.current_device())
            try:
                out = subprocess.run(["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout
                return float(out.strip().splitlines()[0])
            except Exception:
                return None

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


class Clock:
    """Wall and process CPU time from ``start()`` over ``images`` counted by ``step()``."""

    def __init__(self, device: str, warmup: int, batch: int) -> None:
        self.device, self.warmup, self.batch = device, warmup, batch
        self.steps, self.started, self.images = 0, None, 0

    def step(self) -> None:
        """After every training iteration: starts the clock once the warm-up is done."""
        self.steps += 1
        if self.steps == self.warmup:
            sync(self.device)
            self.started = (time.perf_counter(), time.process_time())
        elif self.steps > self.warmup:
            self.images += self.batch

    def result(self) -> dict:
        sync(self.device)
        wall = time.perf_counter() - self.started[0]
        cpu = time.process_time() - self.started[1]
        return {"img_s": self.images / wall, "img_cpu_s": self.images / cpu,
                "timed_iters": self.images // self.batch}


# --------------------------------------------------------------------------- our side
def ours_cfg(recipe: str, batch: int, device: str, variant: set, extra=()) -> object:
    sys.path.insert(0, str(ROOT))
    from reid.config import load_config

    opts = ["MODEL.BACKBONE.PRETRAIN", "False", "MODEL.DEVICE", device,
            "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.BF16_ENABLED", str("bf16" in variant),
            "SOLVER.FP16_ENABLED", "False", *extra]
    workers = next((v[1:] for v in variant if v[0] == "w" and v[1:].isdigit()), None)
    if workers is not None:
        opts += ["DATALOADER.NUM_WORKERS", workers]
    return load_config(str(ROOT / RECIPES[recipe][1]), opts)


def ours_parts(cfg, variant: set, device: str, loader=None, iters_per_epoch: int = 100):
    """Model, optimizer and scheduler of ``cfg``, with the variant's memory format and Adam."""
    from reid.modeling import build_model
    from reid.solver import build_lr_scheduler, build_optimizer
    from reid.solver.optimizer import build_param_groups

    torch.manual_seed(SEED)
    model = build_model(cfg).to(device)
    if "cl" in variant:
        model = model.to(memory_format=torch.channels_last)
    if "fused" in variant or "foreach" in variant:
        kind = "fused" if "fused" in variant else "foreach"
        optimizer = torch.optim.Adam(build_param_groups(cfg, model), lr=cfg.SOLVER.BASE_LR,
                                     **{kind: True})
    else:
        optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch=iters_per_epoch)
    return model, optimizer, scheduler


def channels_last_batches(batches):
    for batch in batches:
        yield {**batch, "images": batch["images"].contiguous(memory_format=torch.channels_last)}


class ChannelsLastLoader:
    """A loader whose batches' images are channels_last (the trainer's samplers reach through)."""

    def __init__(self, loader) -> None:
        self.loader, self.sampler = loader, loader.sampler
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return channels_last_batches(self.loader)


def ours_step(recipe: str, batch: int, device: str, variant: set, warmup: int, steps: int):
    from reid.engine.trainer import Trainer

    cfg = ours_cfg(recipe, batch, device, variant,
                   ["MODEL.HEADS.NUM_CLASSES", str(STEP_CLASSES)])
    model, optimizer, scheduler = ours_parts(cfg, variant, device)
    batches = random_batches(RECIPES[recipe][2], batch, device)
    if "cl" in variant:
        batches = list(channels_last_batches(batches))
    amp = cfg.SOLVER.BF16_ENABLED
    trainer = Trainer(model, batches, optimizer, scheduler, max_epoch=1, device=device,
                      amp=amp, amp_dtype=torch.bfloat16)
    model.train()
    clock = Clock(device, warmup, batch)
    with UtilisationSampler(device) as gpu:
        for n in range(warmup + steps):
            trainer.run_step(batches[n % len(batches)])
            clock.step()
        result = clock.result()
    return {**result, "loss": trainer.metrics["total_loss"], "gpu_util": gpu.mean(),
            "model": model}


def ours_e2e(recipe: str, batch: int, device: str, variant: set, warmup: int, iters: int,
             workdir: Path):
    from reid.data.build import build_train_loader
    from reid.engine.hook_base import HookBase
    from reid.engine.trainer import Trainer
    from reid.stages import with_num_classes

    root = synthetic_root(workdir, RECIPES[recipe][2])
    cfg = ours_cfg(recipe, batch, device, variant, [
        "DATASETS.ROOT", str(root), "DATASETS.NAMES", '("SyntheticMarket1501",)',
        "DATASETS.TESTS", '("SyntheticMarket1501",)'])
    loader, num_classes = build_train_loader(cfg)
    if "nopersist" in variant:  # the same loader without persistent workers
        loader = torch.utils.data.DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
            drop_last=True, generator=loader.generator, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, worker_init_fn=loader.worker_init_fn)
    cfg = with_num_classes(cfg, num_classes)
    model, optimizer, scheduler = ours_parts(cfg, variant, device, iters_per_epoch=len(loader))
    clock = Clock(device, warmup, batch)

    class Timing(HookBase):
        def after_step(self) -> None:
            clock.step()

    trainer = Trainer(model, ChannelsLastLoader(loader) if "cl" in variant else loader,
                      optimizer, scheduler, max_epoch=math.ceil(iters / len(loader)),
                      device=device,
                      amp=cfg.SOLVER.BF16_ENABLED, amp_dtype=torch.bfloat16, hooks=[Timing()])
    with UtilisationSampler(device) as gpu:
        trainer.train()
        result = clock.result()
    return {**result, "loss": trainer.metrics["total_loss"], "gpu_util": gpu.mean(),
            "iters_per_epoch": len(loader), "model": model}


# --------------------------------------------------------------------------- FastReID's side
def fastreid_cfg(recipe: str, batch: int, device: str, extra=()):
    from fastreid_lockstep import fastreid_shims

    fastreid_shims()
    from fastreid.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(HERE / "fastreid_recipes" / RECIPES[recipe][0]))
    cfg.merge_from_list(["MODEL.BACKBONE.PRETRAIN", "False", "MODEL.DEVICE", device,
                         "SOLVER.IMS_PER_BATCH", str(batch),
                         "SOLVER.AMP.ENABLED", str(device == "cuda"), *extra])
    return cfg


def fastreid_optimizer(cfg, model):
    """FastReID's optimizer with its plain parameter list (``contiguous=False``): its contiguous
    buffers leave the parameters unchanged after ``step()`` on torch 2.x."""
    from fastreid.solver import build_optimizer

    return build_optimizer(cfg, model, contiguous=False)


def fastreid_step(recipe: str, batch: int, device: str, warmup: int, steps: int):
    cfg = fastreid_cfg(recipe, batch, device, ["MODEL.HEADS.NUM_CLASSES", str(STEP_CLASSES)])
    from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer
    from fastreid.modeling import build_model
    from fastreid.utils.events import EventStorage

    torch.manual_seed(SEED)
    model = build_model(cfg)
    optimizer, wrapper = fastreid_optimizer(cfg, model)
    batches = random_batches(RECIPES[recipe][2], batch, device)
    loader = (batches[n % len(batches)] for n in range(warmup + steps))
    trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
        model, loader, optimizer, wrapper)
    clock = Clock(device, warmup, batch)
    with EventStorage(0) as storage, UtilisationSampler(device) as gpu:
        for n in range(warmup + steps):
            trainer.iter = storage.iter = n
            trainer.run_step()
            clock.step()
        result = clock.result()
    return {**result, "loss": storage.latest()["total_loss"][0], "gpu_util": gpu.mean()}


def fastreid_e2e(recipe: str, batch: int, device: str, warmup: int, iters: int, workdir: Path):
    root = synthetic_root(workdir, RECIPES[recipe][2])
    os.environ["FASTREID_DATASETS"] = str(root / "SyntheticMarket1501")  # read at import
    output = workdir / "fastreid-out"  # its DefaultTrainer writes config.yaml there
    output.mkdir(parents=True, exist_ok=True)
    cfg = fastreid_cfg(recipe, batch, device, ["OUTPUT_DIR", str(output)])
    import fastreid.data.build as fastreid_build
    from fastreid.engine import DefaultTrainer, hooks
    from fastreid.engine.train_loop import HookBase, TrainerBase

    if device != "cuda":
        class PlainLoader(torch.utils.data.DataLoader):
            """DataLoaderX's signature, without its CUDA-stream prefetch thread."""

            def __init__(self, local_rank, **kwargs):
                super().__init__(**kwargs)

        fastreid_build.DataLoaderX = PlainLoader
    clock = Clock(device, warmup, batch)

    class Timing(HookBase):
        def after_step(self) -> None:
            clock.step()

    class Trainer(DefaultTrainer):
        @classmethod
        def build_optimizer(cls, cfg, model):
            return fastreid_optimizer(cfg, model)

        def build_hooks(self):  # the LR hook only (no evaluation, checkpoints, writers)
            return [hooks.IterationTimer(), hooks.LRScheduler(self.optimizer, self.scheduler),
                    Timing()]

    torch.manual_seed(SEED)
    trainer = Trainer(cfg)
    with UtilisationSampler(device) as gpu:
        TrainerBase.train(trainer, 0, math.ceil(iters / trainer.iters_per_epoch),
                          trainer.iters_per_epoch)
        result = clock.result()
    return {**result, "loss": trainer.storage.latest()["total_loss"][0], "gpu_util": gpu.mean(),
            "iters_per_epoch": trainer.iters_per_epoch}


# --------------------------------------------------------------------------- loaders alone
def loader_alone(side: str, recipe: str, batch: int, warmup: int, steps: int, workers: int,
                 workdir: Path) -> dict:
    """Batches drawn from a project's training loader alone (no model): JPEG decoding,
    augmentation, sampler and collation, in ``workers`` processes (0: this one)."""
    root = synthetic_root(workdir, RECIPES[recipe][2])
    if side == "fastreid":
        os.environ["FASTREID_DATASETS"] = str(root / "SyntheticMarket1501")  # read at import
        cfg = fastreid_cfg(recipe, batch, "cpu", ["DATALOADER.NUM_WORKERS", str(workers)])
        import fastreid.data.build as fastreid_build

        class PlainLoader(torch.utils.data.DataLoader):
            def __init__(self, local_rank, **kwargs):
                super().__init__(**kwargs)

        fastreid_build.DataLoaderX = PlainLoader
        batches = iter(fastreid_build.build_reid_train_loader(cfg))
    else:
        from reid.data.build import build_train_loader
        from reid.engine.trainer import cycle

        cfg = ours_cfg(recipe, batch, "cpu", {f"w{workers}"}, [
            "DATASETS.ROOT", str(root), "DATASETS.NAMES", '("SyntheticMarket1501",)',
            "DATASETS.TESTS", '("SyntheticMarket1501",)'])
        batches = cycle(build_train_loader(cfg)[0])
    clock = Clock("cpu", warmup, batch)
    for _ in range(warmup + steps):
        next(batches)
        clock.step()
    return {**clock.result(), "loss": float("nan"), "gpu_util": None}


# --------------------------------------------------------------------------- MFU
def train_flops_per_image(model: torch.nn.Module, size: tuple[int, int], device: str) -> float:
    """FLOPs of one training step (forward + backward) per image, counted at batch 8."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = random_batches(size, 8, device, count=1)[0]
    batch["targets"] = batch["targets"] % 8  # P x K: every identity twice at least
    counter = FlopCounterMode(display=False)
    model.train()
    with counter:
        sum(model(batch).values()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 8


# --------------------------------------------------------------------------- driver
def worker(args) -> dict:
    side, mode, variant, recipe, batch = args.worker
    batch, device = int(batch), "cuda" if torch.cuda.is_available() else "cpu"
    parts, workdir = set(variant.split("+")), Path(args.workdir)
    threads = next((int(v[1:]) for v in parts if v[0] == "t" and v[1:].isdigit()), args.threads)
    if threads:
        torch.set_num_threads(threads)
    if mode == "loader":
        result = loader_alone(side, recipe, batch, args.warmup, args.steps, args.loader_workers,
                              workdir)
    elif side == "fastreid":
        result = (fastreid_step(recipe, batch, device, args.warmup, args.steps) if mode == "step"
                  else fastreid_e2e(recipe, batch, device, args.e2e_warmup, args.e2e_iters,
                                    workdir))
    else:
        result = (ours_step(recipe, batch, device, parts, args.warmup, args.steps)
                  if mode == "step" else ours_e2e(recipe, batch, device, parts, args.e2e_warmup,
                                                  args.e2e_iters, workdir))
        model = result.pop("model", None)
        if device == "cuda" and model is not None:
            flops = train_flops_per_image(model, RECIPES[recipe][2], device)
            peak = peak_bf16(torch.cuda.get_device_name())
            result.update(flops_per_img=flops,
                          mfu=flops * result["img_s"] / peak if peak else None)
    result.update(threads=torch.get_num_threads(), device=device,
                  name=torch.cuda.get_device_name() if device == "cuda" else "cpu")
    return result


def spawn(args, side: str, mode: str, variant: str, recipe: str, batch: int) -> dict:
    python = args.fastreid_python if side == "fastreid" else sys.executable
    cmd = [python, __file__, "--worker", side, mode, variant, recipe, str(batch),
           "--workdir", args.workdir, "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--e2e-warmup", str(args.e2e_warmup), "--e2e-iters", str(args.e2e_iters),
           "--threads", str(args.threads), "--loader-workers", str(args.loader_workers)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        return {"error": f"{side} {mode} {variant} exited {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(side: str, variant: str, r: dict, base: dict | None) -> str:
    if "error" in r:
        return f"    {side:<9} {variant:<22} FAILED {r['error']}"
    ratio = f"{r['img_s'] / base['img_s']:.2f}x" if base and "img_s" in base else "-"
    text = (f"    {side:<9} {variant:<22} {r['img_s']:8.1f} img/s {ratio:>7} vs FastReID  "
            f"{r['img_cpu_s']:7.1f} img/CPU-s  loss {r['loss']:.4f}  ({r['timed_iters']} timed "
            f"iters, {r['threads']} threads)")
    if r.get("gpu_util") is not None:
        text += f"  GPU util {r['gpu_util']:.0f} %"
    if "flops_per_img" in r:
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "unknown"
        text += f"  {r['flops_per_img'] / 1e9:.2f} GFLOP/img (fwd+bwd)  MFU {mfu}"
    return text


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["step", "e2e"], choices=("step", "e2e", "loader"))
    parser.add_argument("--recipe", default="BoT-R50-256x128" if cuda else "BoT-R18-128x64",
                        choices=list(RECIPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256] if cuda else [64])
    parser.add_argument("--variants", nargs="+", default=["bf16"] if cuda else ["fp32"],
                        help="ours, each measured on its own (see the module's docstring)")
    parser.add_argument("--no-fastreid", action="store_true")
    parser.add_argument("--fastreid-variants", nargs="+", default=["fastreid"],
                        help="FastReID's runs: fastreid (as it is), fastreid+tN (N threads); "
                             "the first is what the ratios compare with")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10 if cuda else 5,
                        help="untimed model steps")
    parser.add_argument("--steps", type=int, default=50 if cuda else 20,
                        help="timed model steps")
    parser.add_argument("--e2e-warmup", type=int, default=10, help="untimed iterations")
    parser.add_argument("--e2e-iters", type=int, default=300 if cuda else 36,
                        help="iterations at least, warm-up included (whole epochs of each "
                             "trainer: 18 per epoch at batch 64 on the CPU's 1,200 images)")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="loader workers of both sides in the loader mode")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of every measured process (0: torch's default); 1 "
                             "makes img/CPU-s a load-proof measure of the work per image")
    parser.add_argument("--fastreid-python", default=FASTREID_PYTHON)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                          "reid-train-bench"))
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with_fastreid = not args.no_fastreid and Path(args.fastreid_python).exists()
    device = torch.cuda.get_device_name() if cuda else f"{os.cpu_count()} CPU cores"
    print(f"{args.recipe} on {device}; flags: {cpu_flags()}; FastReID: "
          f"{args.fastreid_python if with_fastreid else 'not run'}")
    if "e2e" in args.modes or "loader" in args.modes:
        synthetic_root(Path(args.workdir), RECIPES[args.recipe][2])
    for repeat in range(1, args.repeats + 1):
        for batch in args.batches:
            for mode in args.modes:
                load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"round {repeat}, batch {batch}, {mode} (load average {load}):", flush=True)
                base = None
                for variant in args.fastreid_variants if with_fastreid else ():
                    result = spawn(args, "fastreid", mode, variant, args.recipe, batch)
                    base = base or result  # the first: what the ratios compare with
                    name = "its recipe" if variant == "fastreid" else variant
                    print(describe("fastreid", name + (" (fp16 AMP)" if cuda else ""), result,
                                   None if result is base else base), flush=True)
                for variant in args.variants:
                    print(describe("ours", variant, spawn(args, "ours", mode, variant,
                                                          args.recipe, batch), base), flush=True)
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
