"""Toy inputs shared by several test modules (this module holds no tests): models, loaders,
records, pictures, small image trees on disk and the configs that go with them.

The independent reference computations the tests compare against are in ``oracles.py``; the
fixtures (tiny synthetic dataset, MLflow / Prefect isolation, offline torch hub) in
``conftest.py``. A helper that only one test module uses stays in that module.

The engine toys follow the project's contracts without using reid.modeling or reid.data: the
model in training mode maps a batch dict to a dict of scalar losses and in eval mode maps images
to B x D features; the loader yields {"images", "targets", "camids", "img_paths"} and its sampler
has set_epoch(epoch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Sampler

from conftest import as_yaml
from reid.config import get_cfg, load_config
from reid.engine.trainer import Trainer
from reid.errors import ReidError, one_line
from reid.modeling import BACKBONE_REGISTRY, build_model
from reid.solver import build_lr_scheduler, build_optimizer

# ------------------------------------------------------------------ engine: toy model and data

IMAGE_SHAPE = (3, 2, 2)
NUM_CLASSES = 4


class ToyReidNet(nn.Module):
    """backbone (linear + BatchNorm) and heads (classifier); ``nan_at_call`` makes the n-th
    training forward (counted from 1) return a NaN classification loss."""

    def __init__(self, feat_dim: int = 8, num_classes: int = NUM_CLASSES,
                 nan_at_call: int | None = None) -> None:
        super().__init__()
        in_dim = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, feat_dim),
                                      nn.BatchNorm1d(feat_dim), nn.ReLU())
        self.heads = nn.Linear(feat_dim, num_classes)
        self.nan_at_call = nan_at_call
        self.calls = 0

    def forward(self, batch):
        if not self.training:
            images = batch["images"] if isinstance(batch, dict) else batch
            return self.backbone(images)
        feats = self.backbone(batch["images"])
        loss_cls = F.cross_entropy(self.heads(feats), batch["targets"])
        self.calls += 1
        if self.calls == self.nan_at_call:
            loss_cls = loss_cls * float("nan")
        return {"loss_cls": loss_cls, "loss_reg": 0.01 * feats.pow(2).mean()}


class EpochShuffleSampler(Sampler):
    """A permutation that depends only on (seed, epoch); records its set_epoch calls."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.epochs_set: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def make_records(count: int = 16, seed: int = 0) -> list[dict]:
    """Images whose mean depends on the identity, so the classifier can learn something."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for index in range(count):
        pid = index % NUM_CLASSES
        image = torch.randn(IMAGE_SHAPE, generator=generator) + pid
        records.append({"images": image, "targets": pid, "camids": index % 2,
                        "img_paths": f"img_{seed}_{index}.jpg"})
    return records


def make_loader(count: int = 16, batch_size: int = 8, seed: int = 0) -> DataLoader:
    records = make_records(count, seed)
    return DataLoader(records, batch_size=batch_size, drop_last=True,
                      sampler=EpochShuffleSampler(len(records), seed))


def solver_cfg(**solver):
    """Default config with the given SOLVER keys changed."""
    cfg = get_cfg()
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def make_trainer(max_epoch=2, hooks=(), model=None, loader=None, cfg=None, seed=0, **kwargs):
    """A Trainer over the toy model and loader (Adam, 2 warm-up iterations); ``hooks`` may be
    a callable (model, optimizer, scheduler) -> hooks."""
    torch.manual_seed(seed)
    model = ToyReidNet() if model is None else model
    loader = make_loader() if loader is None else loader
    cfg = cfg or solver_cfg(OPT="Adam", BASE_LR=0.01, WARMUP_ITERS=2, STEPS=[3],
                            MAX_EPOCH=max_epoch)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, kwargs.get("iters_per_epoch") or len(loader))
    hooks = hooks(model, optimizer, scheduler) if callable(hooks) else hooks
    return Trainer(model, loader, optimizer, scheduler, max_epoch=max_epoch, device="cpu",
                   hooks=hooks, **kwargs)


# ------------------------------------------------------------------ data: configs and pictures

def with_changes(cfg, changes: dict):
    """``cfg`` with each ``SECTION__KEY=value`` change applied (``__`` stands for the dot),
    frozen as the loaders receive it."""
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return cfg.freeze()


def picture(seed: int = 0, size: tuple[int, int] = (20, 44)) -> Image.Image:
    """A random RGB picture of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# A tiny Market-1501 tree on disk and a loader config reading it
MARKET_SIZE = (32, 16)                        # INPUT.SIZE_TRAIN / SIZE_TEST of loader_cfg
MARKET_TRAIN_PIDS = [3, 8, 11, 20, 21, 40]    # 4 images each over 2 cameras
MARKET_TEST_PIDS = [50, 61, 72]               # query: 1 per camera; gallery: 2 per camera


def market_tree(base: Path) -> Path:
    """A tiny Market-1501 tree; every image has its own colour so content follows the path."""
    names = {"bounding_box_train": [], "query": [], "bounding_box_test": []}
    for pid in MARKET_TRAIN_PIDS:
        names["bounding_box_train"] += [f"{pid:04d}_c{1 + j % 2}s1_{100 + j:06d}_01.jpg"
                                        for j in range(4)]
    for pid in MARKET_TEST_PIDS:
        names["query"] += [f"{pid:04d}_c{c}s1_000001_01.jpg" for c in (1, 2)]
        names["bounding_box_test"] += [f"{pid:04d}_c{c}s1_{200 + j:06d}_01.jpg"
                                       for c in (1, 2) for j in range(2)]
    names["bounding_box_test"] += ["0000_c1s1_000300_01.jpg", "-1_c2s1_000301_01.jpg"]
    rng = np.random.default_rng(0)
    for split, files in names.items():
        (base / split).mkdir(parents=True)
        for name in files:
            arr = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(base / split / name, quality=95)
    return base


def loader_cfg(root: Path, **changes):
    """Market1501 under ``root`` at MARKET_SIZE, batches of 8 = 2 ids x 4, no workers."""
    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(root)
    cfg.DATASETS.NAMES = ("Market1501",)
    cfg.INPUT.SIZE_TRAIN = list(MARKET_SIZE)
    cfg.INPUT.SIZE_TEST = list(MARKET_SIZE)
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.DATALOADER.NUM_INSTANCE = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.IMS_PER_BATCH = 5
    return with_changes(cfg, changes)


# ------------------------------------------------------------------ modeling: configs, batches

def backbone_cfg(**backbone):
    """The default config with these MODEL.BACKBONE keys; PRETRAIN off (tests load no weights
    unless they say so)."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.update(backbone)
    return cfg


def error_message(build: Callable, *args) -> str:
    """The message of the ReidError ``build(*args)`` raises, checked to be the single line the
    command line prints."""
    with pytest.raises(ReidError) as err:
        build(*args)
    message = str(err.value)
    assert one_line(err.value) == message
    return message


def num_params(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Parameter count, leaving out parameters whose names start with ``skip``."""
    return sum(p.numel() for name, p in module.named_parameters() if not name.startswith(skip))


def identity_batch(num_ids: int, per_id: int = 2, height: int = 64, seed: int = 0) -> dict:
    """A training batch as the loader delivers it: ``per_id`` random 0..255 images (height x 32)
    of each identity 0..num_ids-1, identities in order."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_ids).repeat_interleave(per_id)
    return {"images": torch.rand(len(targets), 3, height, 32, generator=g) * 255,
            "targets": targets}


# ------------------------------------------------------------------ inference: a tiny model

TINY_BACKBONE = "build_tiny_inference_test_backbone"
TINY_SIZE = (32, 16)   # INPUT.SIZE_TEST of the tiny model's config


class TinyBackbone(nn.Module):
    """conv 3x3 stride 2 -> BN -> ReLU: small enough to recompute by hand."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def register_tiny_backbone() -> str:
    """TinyBackbone under the name TINY_BACKBONE (once per process); returns the name."""
    if TINY_BACKBONE not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(lambda cfg: TinyBackbone(cfg.MODEL.BACKBONE.FEAT_DIM),
                                   name=TINY_BACKBONE)
    return TINY_BACKBONE


TINY_CONFIG = {
    "MODEL.DEVICE": "cpu",
    "MODEL.BACKBONE.NAME": TINY_BACKBONE,
    "MODEL.BACKBONE.FEAT_DIM": 8,
    "MODEL.BACKBONE.PRETRAIN": False,
    "MODEL.HEADS.NUM_CLASSES": 0,
    "INPUT.SIZE_TEST": list(TINY_SIZE),
    "DATALOADER.NUM_WORKERS": 0,
}


def write_config(path: Path, extra: dict | None = None) -> Path:
    """The tiny model's config file (TINY_CONFIG with ``extra`` dotted keys changed)."""
    register_tiny_backbone()
    path.write_text(as_yaml({**TINY_CONFIG, **(extra or {})}))
    return path


def randomised_state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    """A trained-looking state of the tiny model (not the values a fresh build starts with)."""
    cfg = load_config(None, ["MODEL.BACKBONE.NAME", register_tiny_backbone(),
                             "MODEL.BACKBONE.FEAT_DIM", "8", "MODEL.BACKBONE.PRETRAIN", "False",
                             "MODEL.HEADS.NUM_CLASSES", str(num_classes)])
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in build_model(cfg).state_dict().items():
        if value.is_floating_point():
            value = torch.rand(value.shape, generator=generator) + 0.5  # positive: valid var
        state[key] = value
    return state


def save_fastreid_style(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """As FastReID's trainer saves a DistributedDataParallel model, pixel statistics included."""
    model = {f"module.{key}": value for key, value in state.items()}
    model["module.pixel_mean"] = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    torch.save({"model": model, "iteration": 1234, "optimizer": {}}, path)
    return path


def run_ranks(worker: Callable, out_dir: Path, world_size: int, deadline_s: float) -> list:
    """Spawn ``worker(rank, port, out_dir)`` on ``world_size`` processes (a gloo group on a
    free port), fail the test if a rank hangs past ``deadline_s``, and return what each rank
    saved as ``out_dir/rank<r>.pt``."""
    import time

    import torch.multiprocessing as mp
    from conftest import free_port
    context = mp.start_processes(worker, args=(free_port(), str(out_dir)), nprocs=world_size,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the ranks did not finish in {deadline_s} s (a rank hangs)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
