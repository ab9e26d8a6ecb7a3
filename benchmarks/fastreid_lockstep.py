"""Lock-step training comparison with FastReID 1.4 (issue 11 item 2): the same initial weights,
the same batches, step by step.

    .venv/bin/python benchmarks/fastreid_lockstep.py [--iters 50] [--ours-config FILE]

One command, two interpreters: this project's venv runs our side and starts FastReID's side as a
child process in ``--fastreid-python`` (default ``/work/fastreid-venv/bin/python``; set it up as
``benchmarks/fastreid_parity.py`` says). The recipe is FastReID's BoT-R18 at 128x64
(``benchmarks/fastreid_recipes/bagtricks_R18-128x64.yml``, FastReID 1.4's format, what FastReID
reads); our side reads ``--ours-config`` (default ``params/bagtricks_R18-128x64.yml``, the same
recipe in params/ style; pass the FastReID file itself to feed it unchanged to both).

1. **Batches.** Our training loader (our sampler, our seeded transforms) over the Market-layout
   folder ``--data`` (default: the synthetic set of ``make data``) gives ``--iters`` P x K
   batches of augmented images (float 0..255) and targets; both sides train on exactly these
   tensors, so transforms and sampler are taken out of the comparison (they are compared on
   their own by ``--transforms`` and ``--sampler`` below).
2. **Weights.** FastReID builds its model (``MODEL.HEADS.NUM_CLASSES`` from the folder,
   ``MODEL.DEVICE cpu``), and its initial state dict is loaded into ours (strict).
3. **Steps.** Each side runs forward (training mode), sums the losses, ``zero_grad``,
   ``backward``, ``optimizer.step()`` and steps its LR schedule: FastReID's side with
   FastReID's ``build_optimizer(cfg, model, contiguous=False)`` (its contiguous parameter
   buffers do not update the parameters under torch 2.x; the plain parameter list is FastReID's
   own option and the same Adam arithmetic) and ``build_lr_scheduler``, stepped by the rule of
   FastReID's ``LRScheduler`` hook (warm-up scheduler after every iteration while
   ``iter + 1 <= WARMUP_ITERS``; the main scheduler after every epoch once
   ``iter + 1 > WARMUP_ITERS`` and ``epoch + 1 > DELAY_EPOCHS``); our side with our
   ``Trainer.run_step``. Per step the child sends every loss term, the LR of every parameter
   (by name), every gradient and, after the step, every parameter and BatchNorm buffer.
4. **Report.** A table of the steps: each loss term ours / FastReID's, the largest LR
   difference, the largest gradient difference (relative to the largest gradient of that
   tensor) and the largest parameter difference after the step with the tensor it is in; then
   the first step where any of them parts beyond ``--rtol`` (losses, gradients) or
   ``--atol`` (parameters and buffers after the step) and what parted. Before the steps, every
   parameter's optimizer settings (LR, weight decay, betas, eps) are compared.
5. **LR schedule over the whole training** (``MAX_EPOCH`` x iterations per epoch of the
   folder): every parameter group's LR at every iteration, FastReID's (its schedulers stepped by
   the hook's rule, no training) against ours; the first iteration where they differ.

``--transforms``: FastReID's ``build_transforms`` and ours on the same images: the
deterministic part (resize; flip with probability 1) must be equal pixel for pixel; the random
part (padding + random crop, random erasing, flip at 0.5) is compared in distribution (mean
image, share of padding-fill pixels, share of erased pixels, mean brightness) over
``--samples`` draws. ``--sampler``: FastReID's ``NaiveIdentitySampler`` and ours on the folder's
training records: batch structure (P identities x K images), and over ``MAX_EPOCH`` epochs how
often each image and identity is used.

FastReID's ``fastreid.data`` needs two run-time shims on torch 2 / Python 3.10+ (``torch._six``
removed, ``collections.Mapping`` moved to ``collections.abc``); they are set in the child
process only (``fastreid_shims``), FastReID's installed files are not touched.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

import torch

REPO = Path(__file__).resolve().parents[1]
FASTREID_CONFIG = REPO / "benchmarks" / "fastreid_recipes" / "bagtricks_R18-128x64.yml"
OURS_CONFIG = REPO / "params" / "bagtricks_R18-128x64.yml"
FASTREID_PYTHON = "/work/fastreid-venv/bin/python"
DEFAULT_DATA = REPO / "data"
MODEL_SEED = 11


# --------------------------------------------------------------------------- framing
# Records go from the child to the parent over a pipe: 8-byte length + torch.save bytes.

def send(stream: BinaryIO, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the FastReID side ended early (see its stderr above)")
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    return torch.load(io.BytesIO(data), weights_only=False)


# --------------------------------------------------------------------------- FastReID side

def fastreid_shims() -> None:
    """Run-time shims so that ``fastreid.data`` imports on torch 2 / Python 3.11."""
    import collections
    import collections.abc
    import types
    sys.modules.setdefault("torch._six", types.SimpleNamespace(string_classes=(str,)))
    if not hasattr(collections, "Mapping"):
        collections.Mapping = collections.abc.Mapping


def fastreid_cfg(config: str, num_classes: int):
    from fastreid.config import get_cfg
    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.HEADS.NUM_CLASSES", str(num_classes), "MODEL.DEVICE", "cpu"])
    return cfg


class FastReIDHookRule:
    """When FastReID 1.4's ``LRScheduler`` hook steps its two schedulers (hooks.py): the warm-up
    one after an iteration while ``iter + 1 <= WARMUP_ITERS``, the main one after an epoch
    once ``iter + 1 > WARMUP_ITERS`` and ``epoch + 1 > DELAY_EPOCHS`` (``iter`` being the
    trainer's count, already advanced past the epoch's last iteration at epoch end)."""

    def __init__(self, cfg, schedulers: dict) -> None:
        self.warmup_iters = cfg.SOLVER.WARMUP_ITERS
        self.delay_epochs = cfg.SOLVER.DELAY_EPOCHS
        self.schedulers = schedulers

    def after_step(self, iteration: int) -> None:
        if iteration + 1 <= self.warmup_iters:
            self.schedulers["warmup_sched"].step()

    def after_epoch(self, epoch: int, iteration_count: int) -> None:
        if iteration_count + 1 > self.warmup_iters and epoch + 1 > self.delay_epochs:
            self.schedulers["lr_sched"].step()


def param_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def group_lrs(optimizer, names: dict[int, str]) -> dict[str, float]:
    return {names[id(p)]: float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}


def group_hyper(optimizer, names: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Every parameter's optimizer settings (its group's), by parameter name."""
    keys = ("lr", "weight_decay", "betas", "eps", "momentum", "nesterov", "amsgrad")
    return {names[id(p)]: {k: g[k] for k in keys if k in g}
            for g in optimizer.param_groups for p in g["params"]}


def fastreid_side(args: argparse.Namespace) -> int:
    fastreid_shims()
    torch.set_num_threads(1)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # FastReID's prints must not enter the pipe
    from fastreid.modeling import build_model
    from fastreid.solver import build_lr_scheduler, build_optimizer
    from fastreid.utils.events import EventStorage

    work = Path(args.work)
    meta = json.loads((work / "meta.json").read_text())
    cfg = fastreid_cfg(args.fastreid_config, meta["num_classes"])
    torch.manual_seed(MODEL_SEED)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, work / "fastreid_init.pth")
    model.train()
    optimizer, _ = build_optimizer(cfg, model, contiguous=False)
    ipe = meta["iters_per_epoch"]
    schedulers = build_lr_scheduler(cfg, optimizer, ipe)
    rule = FastReIDHookRule(cfg, schedulers)
    names = param_names(model)
    batches = torch.load(work / "batches.pt", weights_only=True)
    send(out, {"ready": True, "hyper": group_hyper(optimizer, names)})
    storage = EventStorage(0).__enter__()  # the losses log their accuracy to it
    for it, (images, targets) in enumerate(zip(batches["images"], batches["targets"])):
        lrs = group_lrs(optimizer, names)
        storage.iter = it
        losses = model({"images": images.clone(), "targets": targets.clone()})
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                 if p.grad is not None}
        optimizer.step()
        rule.after_step(it)
        if (it + 1) % ipe == 0:
            rule.after_epoch(it // ipe, it + 1)
        send(out, {"losses": {k: float(v.detach()) for k, v in losses.items()},
                   "total": float(total.detach()),
                   "lrs": lrs, "grads": grads,
                   "state": {k: v.detach().clone() for k, v in model.state_dict().items()}})
    send(out, {"schedule": fastreid_schedule(cfg, meta)})
    return 0


def fastreid_schedule(cfg, meta: dict) -> list[dict[str, float]]:
    """Every group's LR at every iteration of the whole training, FastReID's schedulers
    stepped by the hook's rule (a fresh model and optimizer; no training)."""
    from fastreid.modeling import build_model
    from fastreid.solver import build_lr_scheduler, build_optimizer
    model = build_model(cfg)
    optimizer, _ = build_optimizer(cfg, model, contiguous=False)
    ipe = meta["iters_per_epoch"]
    rule = FastReIDHookRule(cfg, build_lr_scheduler(cfg, optimizer, ipe))
    names = param_names(model)
    lrs = []
    for it in range(cfg.SOLVER.MAX_EPOCH * ipe):
        lrs.append(group_lrs(optimizer, names))
        optimizer.step()
        rule.after_step(it)
        if (it + 1) % ipe == 0:
            rule.after_epoch(it // ipe, it + 1)
    return lrs


def fastreid_transforms(args: argparse.Namespace) -> int:
    fastreid_shims()
    torch.set_num_threads(1)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    from PIL import Image
    from fastreid.data.transforms import build_transforms
    work = Path(args.work)
    spec = json.loads((work / "transforms.json").read_text())
    cfg = fastreid_cfg(args.fastreid_config, 1)
    results = {}
    for name, overrides in spec["variants"].items():
        c = cfg.clone()
        c.merge_from_list(overrides)
        transform = build_transforms(c, is_train=True)
        torch.manual_seed(0)
        images = [Image.open(p).convert("RGB") for p in spec["paths"]]
        draws = spec["draws"][name]
        results[name] = torch.stack([transform(images[i % len(images)]).float()
                                     for i in range(draws)])
    send(out, results)
    return 0


def fastreid_sampler(args: argparse.Namespace) -> int:
    fastreid_shims()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    from fastreid.data.samplers import NaiveIdentitySampler
    work = Path(args.work)
    spec = json.loads((work / "sampler.json").read_text())
    records = [tuple(r) for r in spec["records"]]
    sampler = NaiveIdentitySampler(records, spec["batch"], spec["k"], seed=spec["seed"])
    stream = iter(sampler)
    send(out, [int(next(stream)) for _ in range(spec["count"])])
    return 0


# --------------------------------------------------------------------------- our side

def ours_cfg(path: Path, data_root: Path, overrides: list[str] = ()):
    from reid.config import load_config
    return load_config(path, ["DATASETS.ROOT", str(data_root), "DATASETS.NAMES",
                              "('SyntheticMarket1501',)", "DATASETS.TESTS",
                              "('SyntheticMarket1501',)", "MODEL.DEVICE", "cpu",
                              "DATALOADER.NUM_WORKERS", "0", *overrides])


def dump_batches(cfg, iters: int, work: Path) -> dict:
    from reid.data.build import build_train_loader
    loader, num_classes = build_train_loader(cfg)
    images, targets = [], []
    batches = iter(loader)
    while len(images) < iters:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        images.append(batch["images"])
        targets.append(batch["targets"])
    torch.save({"images": images, "targets": targets}, work / "batches.pt")
    meta = {"num_classes": num_classes, "iters_per_epoch": len(loader)}
    (work / "meta.json").write_text(json.dumps(meta))
    return meta


def child(args: argparse.Namespace, mode: str, work: Path) -> subprocess.Popen:
    return subprocess.Popen([args.fastreid_python, __file__, mode, "--work", str(work),
                             "--fastreid-config", str(args.fastreid_config)],
                            stdout=subprocess.PIPE, cwd=str(REPO))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale


def worst(diffs: dict[str, float]) -> tuple[str, float]:
    name = max(diffs, key=diffs.get)
    return name, diffs[name]


def our_schedule(cfg, model, ipe: int) -> list[dict[str, float]]:
    from reid.solver import build_lr_scheduler, build_optimizer
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, ipe)
    names = param_names(model)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_EPOCH * ipe):
        lrs.append(group_lrs(optimizer, names))
        optimizer.step()
        scheduler.step()
    return lrs


def lockstep(args: argparse.Namespace) -> int:
    from reid.engine.trainer import Trainer
    from reid.modeling import build_model
    from reid.solver import build_lr_scheduler, build_optimizer

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = ours_cfg(args.ours_config, args.data)
    meta = dump_batches(cfg, args.iters, work)
    ipe = meta["iters_per_epoch"]
    print(f"recipe: FastReID {args.fastreid_config.relative_to(REPO)} / ours "
          f"{Path(args.ours_config).resolve().relative_to(REPO)}; {meta['num_classes']} classes, "
          f"{ipe} iterations per epoch, {args.iters} batches of {cfg.SOLVER.IMS_PER_BATCH}")
    proc = child(args, "--fastreid-side", work)
    ready = receive(proc.stdout)
    from reid.config import CfgNode  # noqa: F401  (config already loaded)
    cfg = ours_cfg(args.ours_config, args.data, ["MODEL.HEADS.NUM_CLASSES",
                                                   str(meta["num_classes"])])
    model = build_model(cfg)
    state = torch.load(work / "fastreid_init.pth", weights_only=True)["model"]
    model.load_state_dict(state, strict=True)
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, ipe)
    trainer = Trainer(model, [], optimizer, scheduler, max_epoch=1, iters_per_epoch=ipe,
                      device="cpu")
    names = param_names(model)
    compare_hyper(group_hyper(optimizer, names), ready["hyper"])
    batches = torch.load(work / "batches.pt", weights_only=True)
    rows, first = [], None
    header = (f"{'it':>3} {'loss_cls ours':>14} {'FastReID':>14} {'loss_tri ours':>14} "
              f"{'FastReID':>14} {'max|dLR|':>9} {'grad rel':>9} {'max|dparam|':>11}  where")
    print(header)
    for it in range(args.iters):
        batch = {"images": batches["images"][it].clone(), "targets": batches["targets"][it].clone()}
        lrs = group_lrs(optimizer, names)
        trainer.run_step(batch)
        ref = receive(proc.stdout)
        ours_losses = {k: v for k, v in trainer.metrics.items() if k.startswith("loss_")}
        loss_rel = {k: abs(ours_losses[k] - ref["losses"][k]) / max(abs(ref["losses"][k]), 1e-12)
                    for k in ref["losses"]}
        missing_terms = sorted(set(ref["losses"]) ^ set(ours_losses))
        lr_diff = {n: abs(lrs[n] - ref["lrs"][n]) / ref["lrs"][n] for n in ref["lrs"]}
        lr_only = sorted(set(lrs) ^ set(ref["lrs"]))
        grad_diff = {n: max_rel(p.grad, ref["grads"][n]) for n, p in model.named_parameters()
                     if p.grad is not None and n in ref["grads"]}
        ours_state = model.state_dict()
        state_diff = {k: float((ours_state[k].double() - v.double()).abs().max())
                      for k, v in ref["state"].items() if v.is_floating_point()}
        lr_name, lr_worst = worst(lr_diff)
        g_name, g_worst = worst(grad_diff)
        s_name, s_worst = worst(state_diff)
        l_name, l_worst = worst(loss_rel)
        print(f"{it:>3} {ours_losses.get('loss_cls', math.nan):>14.8f} "
              f"{ref['losses'].get('loss_cls', math.nan):>14.8f} "
              f"{ours_losses.get('loss_triplet', math.nan):>14.8f} "
              f"{ref['losses'].get('loss_triplet', math.nan):>14.8f} {lr_worst:>9.2e} "
              f"{g_worst:>9.2e} {s_worst:>11.2e}  {s_name}")
        if first is None:
            parted = []
            if missing_terms or lr_only:
                parted.append(f"terms/params on one side only: {missing_terms + lr_only}")
            if l_worst > args.rtol:
                parted.append(f"loss {l_name} (relative {l_worst:.2e})")
            if lr_worst > 1e-12:
                parted.append(f"LR of {lr_name} (ours {lrs[lr_name]:.6g}, FastReID "
                              f"{ref['lrs'][lr_name]:.6g}; {sum(d > 1e-12 for d in lr_diff.values())}"
                              f" parameters differ)")
            if g_worst > args.rtol:
                parted.append(f"gradient of {g_name} (relative {g_worst:.2e})")
            if s_worst > args.atol:
                parted.append(f"after the step, {s_name} (max abs difference {s_worst:.2e})")
            if parted:
                first = (it, parted)
        rows.append({"iter": it, "losses_ours": ours_losses, "losses_fastreid": ref["losses"],
                     "lr": lr_worst, "grad": g_worst, "param": s_worst, "param_name": s_name})
    schedule_ref = receive(proc.stdout)["schedule"]
    proc.wait()
    print()
    if first is None:
        print(f"no step parts beyond rtol {args.rtol} (losses, gradients) and the LRs are equal "
              f"in all {args.iters} steps")
    else:
        print(f"first step that parts (rtol {args.rtol}): iteration {first[0]}: "
              + "; ".join(first[1]))
    worst_loss = max(max(abs(r["losses_ours"][k] - r["losses_fastreid"][k])
                         / max(abs(r["losses_fastreid"][k]), 1e-12) for k in r["losses_fastreid"])
                     for r in rows)
    print(f"largest relative loss difference over {args.iters} steps: {worst_loss:.2e}; "
          f"largest parameter difference: {max(r['param'] for r in rows):.2e}")
    compare_schedules(our_schedule(cfg, build_model(cfg), ipe), schedule_ref, ipe)
    (work / "lockstep.json").write_text(json.dumps(rows, indent=1))
    return 0


def compare_hyper(ours: dict, ref: dict) -> None:
    """Print the optimizer settings that differ, per setting: how many parameters, one example."""
    only = sorted(set(ours) ^ set(ref))
    if only:
        print(f"optimizer: parameters on one side only: {only[:6]}")
    differ: dict[str, list[str]] = {}
    for name in sorted(set(ours) & set(ref)):
        for key in set(ours[name]) | set(ref[name]):
            if ours[name].get(key) != ref[name].get(key):
                differ.setdefault(key, []).append(name)
    if not differ:
        print(f"optimizer: every parameter's settings equal ({len(ref)} parameters: LR, weight "
              f"decay, betas, eps)")
    for key, names in differ.items():
        n = names[0]
        print(f"optimizer: {key} differs for {len(names)} parameters, e.g. {n}: ours "
              f"{ours[n].get(key)}, FastReID {ref[n].get(key)}")


def compare_schedules(ours: list[dict], ref: list[dict], ipe: int) -> None:
    first = next((i for i, (a, b) in enumerate(zip(ours, ref))
                  if any(abs(a[n] - b[n]) > 1e-9 * b[n] for n in b)), None)
    total = len(ref)
    name = next(iter(ref[0])) if first is None else max(
        ref[first], key=lambda n: abs(ours[first][n] - ref[first][n]) / ref[first][n])
    if first is None:
        print(f"LR schedule: every group's LR equal at all {total} iterations "
              f"({total // ipe} epochs of {ipe})")
        return
    changes = [i for i in range(1, total) if abs(ref[i][name] - ref[i - 1][name]) > 1e-15]
    ours_changes = [i for i in range(1, total) if abs(ours[i][name] - ours[i - 1][name]) > 1e-15]
    print(f"LR schedule: parts at iteration {first} (epoch {first // ipe}); group {name}: "
          f"ours {ours[first][name]:.6g}, FastReID {ref[first][name]:.6g}")
    print(f"  FastReID's LR changes after warm-up at iterations "
          f"{[c for c in changes if c > 0 and ref[c][name] < ref[c - 1][name]]}, ours at "
          f"{[c for c in ours_changes if ours[c][name] < ours[c - 1][name]]}")


# --------------------------------------------------------------------------- transforms, sampler

def transforms_check(args: argparse.Namespace) -> int:
    from PIL import Image
    from reid.data.transforms import build_transforms
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = ours_cfg(args.ours_config, args.data)
    root = Path(args.data) / "SyntheticMarket1501" / "Market-1501-v15.09.15" / "bounding_box_train"
    paths = sorted(str(p) for p in root.glob("*.jpg"))[:32]
    off = ["INPUT.PADDING.ENABLED", "False", "INPUT.REA.ENABLED", "False",
           "INPUT.FLIP.ENABLED", "False"]
    n = args.samples
    variants = {
        "resize": (off, len(paths)),
        "flip p=1": (off[:4] + ["INPUT.FLIP.ENABLED", "True", "INPUT.FLIP.PROB", "1.0"],
                     len(paths)),
        "pad+crop": (["INPUT.REA.ENABLED", "False", "INPUT.FLIP.ENABLED", "False"], n),
        "erasing p=1": (["INPUT.PADDING.ENABLED", "False", "INPUT.FLIP.ENABLED", "False",
                         "INPUT.REA.PROB", "1.0"], n),
        "full recipe": ([], n),
    }
    spec = {"paths": paths, "variants": {k: v for k, (v, _) in variants.items()},
            "draws": {k: d for k, (_, d) in variants.items()}}
    (work / "transforms.json").write_text(json.dumps(spec))
    proc = child(args, "--fastreid-transforms", work)
    ref = receive(proc.stdout)
    proc.wait()
    images = [Image.open(p).convert("RGB") for p in paths]
    fill = torch.tensor(cfg.INPUT.REA.VALUE).view(3, 1, 1)
    print("max|diff|: ours against FastReID's images, both from torch.manual_seed(0); 0 means "
          "the same random draws too")
    print(f"{'variant':<12} {'draws':>6} {'max|diff|':>18} {'mean ours':>10} "
          f"{'FastReID':>9} {'pad px ours':>11} {'FastReID':>9} {'erased ours':>11} {'FastReID':>9}")
    for name, (overrides, draws) in variants.items():
        from reid.config import load_config  # noqa: F401
        c = ours_cfg(args.ours_config, args.data, overrides)
        transform = build_transforms(c, is_train=True)
        torch.manual_seed(0)
        ours = torch.stack([transform(images[i % len(images)]) for i in range(draws)])
        theirs = ref[name]
        diff = f"{float((ours - theirs).abs().max()):.3g}"
        pad = lambda x: float((x == 0).all(dim=1).float().mean())  # noqa: E731
        erased = lambda x: float((x - fill).abs().amax(dim=1).lt(1e-3).float().mean())  # noqa: E731
        print(f"{name:<12} {draws:>6} {diff:>18} {float(ours.mean()):>10.3f} "
              f"{float(theirs.mean()):>9.3f} {pad(ours):>11.4f} {pad(theirs):>9.4f} "
              f"{erased(ours):>11.4f} {erased(theirs):>9.4f}")
    return 0


def sampler_check(args: argparse.Namespace) -> int:
    from collections import Counter
    from reid.data.build import load_datasets, relabel
    from reid.data.samplers import NaiveIdentitySampler
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = ours_cfg(args.ours_config, args.data)
    datasets = load_datasets(cfg, list(cfg.DATASETS.NAMES))
    records, _ = relabel([(d.name, d.train) for d in datasets])
    batch, k = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    ipe = len(records) // batch
    epochs = cfg.SOLVER.MAX_EPOCH
    count = ipe * batch * epochs
    spec = {"records": [list(r) for r in records], "batch": batch, "k": k, "seed": 0,
            "count": count}
    (work / "sampler.json").write_text(json.dumps(spec))
    proc = child(args, "--fastreid-sampler", work)
    theirs = receive(proc.stdout)
    proc.wait()
    ours_sampler = NaiveIdentitySampler(records, batch, k, seed=0)
    ours = []
    for _ in range(epochs):
        ours += list(iter(ours_sampler))
    print(f"{len(records)} images, {len({r[1] for r in records})} identities, {ipe} batches "
          f"of {batch} per epoch, {epochs} epochs")
    for name, stream in (("ours", ours), ("FastReID", theirs)):
        batches = [stream[i:i + batch] for i in range(0, len(stream), batch)]
        pk_ok = all(len({records[j][1] for j in b}) == batch // k
                    and all(c == k for c in Counter(records[j][1] for j in b).values())
                    for b in batches)
        per_image = Counter(stream)
        per_id = Counter(records[j][1] for j in stream)
        im = torch.tensor([per_image.get(i, 0) for i in range(len(records))], dtype=torch.float)
        ids = torch.tensor(list(per_id.values()), dtype=torch.float)
        print(f"{name:<9} P x K batches: {pk_ok}; uses per image mean {float(im.mean()):.2f} "
              f"std {float(im.std()):.2f} min {int(im.min())} max {int(im.max())}; per identity "
              f"std/mean {float(ids.std() / ids.mean()):.3f}")
    return 0


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="relative difference of a loss or a gradient that counts as parting")
    parser.add_argument("--atol", type=float, default=1e-9,
                        help="absolute parameter difference after a step that counts as parting")
    parser.add_argument("--ours-config", type=Path, default=OURS_CONFIG)
    parser.add_argument("--fastreid-config", type=Path, default=FASTREID_CONFIG)
    parser.add_argument("--fastreid-python", default=FASTREID_PYTHON)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="datasets root holding SyntheticMarket1501 (make data)")
    parser.add_argument("--work", default="/tmp/fastreid-lockstep")
    parser.add_argument("--samples", type=int, default=2000)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--transforms", action="store_true")
    mode.add_argument("--sampler", action="store_true")
    mode.add_argument("--fastreid-side", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--fastreid-transforms", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--fastreid-sampler", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.fastreid_config = Path(args.fastreid_config).resolve()
    if args.fastreid_side:
        return fastreid_side(args)
    if args.fastreid_transforms:
        return fastreid_transforms(args)
    if args.fastreid_sampler:
        return fastreid_sampler(args)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.transforms:
        return transforms_check(args)
    if args.sampler:
        return sampler_check(args)
    return lockstep(args)


if __name__ == "__main__":
    sys.exit(main())
