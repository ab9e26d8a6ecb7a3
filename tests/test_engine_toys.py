"""Toy model and in-memory data shared by the engine tests (this module holds no tests).

They follow the project's contracts without using reid.modeling or reid.data: the model in
training mode maps a batch dict to a dict of scalar losses and in eval mode maps images to
B x D features; the loader yields {"images", "targets", "camids", "img_paths"} and its
sampler has set_epoch(epoch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from reid.config import get_cfg

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
