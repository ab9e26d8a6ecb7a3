"""Data loaders from the config.

Batches are dicts: ``images`` float32 ``B x 3 x H x W`` in 0..255, ``targets`` int64 (training:
contiguous labels 0..C-1; test: the datasets' pids), ``camids`` int64, ``img_paths`` list of str.
"""
from __future__ import annotations

import logging
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from reid.config import CfgNode
from reid.data.datasets import DATASET_REGISTRY, ImageDataset, Record
from reid.data.samplers import EpochSampler, InferenceSampler, build_train_sampler
from reid.data.transforms import build_transforms
from reid.errors import ReidError
from reid.utils import comm
from reid.utils.logger import log_first_n

logger = logging.getLogger(__name__)


def read_image(path: str) -> Image.Image:
    """An RGB PIL image; any decoding failure is a one-line ReidError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a transform
            if img.mode != "RGB":  # once per mode and process, not once per image
                log_first_n(logging.INFO, f"converting {img.mode} images to RGB", key="message")
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ReidError(f"cannot read image {path}: {why} (expected a readable JPEG/PNG)") from None


class RecordDataset(Dataset):
    """``(img_path, target, camid)`` records -> batch items, through ``transform``.

    A key is an index, or ``(index, seed)`` (from ``AugmentationSeeds``): the transform then
    draws from torch's RNG seeded with ``seed``, and the caller's RNG state is left as it was.
    """

    def __init__(self, records: Sequence[Record], transform: Callable) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, target, camid = self.records[index]
        image = read_image(path)
        if seed is None:
            image = self.transform(image)
        else:
            # The CPU generator alone (2 us; torch.manual_seed with fork_rng costs 135 us, as
            # it also seeds the GPUs): transforms draw from it on the CPU.
            generator = torch.default_generator
            state = generator.get_state()
            generator.manual_seed(seed)
            try:
                image = self.transform(image)
            finally:
                generator.set_state(state)
        return {"images": image, "targets": target, "camids": camid, "img_paths": path}


class AugmentationSeeds(Sampler[tuple[int, int]]):
    """A training sampler's indices paired with a seed for each sample's augmentations.

    The seed is a function of SEED, the epoch and the sample's place in the epoch's *global*
    batch sequence, so a sample is augmented the same way whatever the number of loader
    workers or processes, and in a resumed run (``RecordDataset`` applies it). Transforms that
    keep state between images (RandomPatch's pool) stay outside this guarantee.
    """

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler
        self.first_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def start_at_batch(self, batch: int) -> None:
        """The next pass (only) starts at batch ``batch`` of its epoch: a training resumed
        inside an epoch gets the batches, and augmentations, it had not consumed yet."""
        self.first_batch = batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        sampler = self.sampler
        epoch, offset = sampler.epoch, sampler.rank * sampler.per_rank
        skip, self.first_batch = self.first_batch * sampler.per_rank, 0
        for position, index in enumerate(sampler):
            if position < skip:
                continue
            batch, place = divmod(position, sampler.per_rank)
            global_position = batch * sampler.mini_batch_size + offset + place
            yield index, sample_seed(sampler.seed, epoch, global_position)

    def __len__(self) -> int:
        return len(self.sampler)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed from (SEED, epoch, global position), well mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(
        1, dtype=np.uint64)[0] >> np.uint64(1))


def collate(items: list[dict]) -> dict:
    return {
        "images": torch.stack([it["images"] for it in items]),
        "targets": torch.tensor([it["targets"] for it in items], dtype=torch.int64),
        "camids": torch.tensor([it["camids"] for it in items], dtype=torch.int64),
        "img_paths": [it["img_paths"] for it in items],
    }


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from the torch seed the DataLoader gave it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def load_datasets(cfg: CfgNode, names: Sequence[str]) -> list[ImageDataset]:
    datasets = []
    for name in names:
        dataset = DATASET_REGISTRY.get(name)(cfg.DATASETS.ROOT)
        if comm.is_main_process():
            dataset.log_summary()
        datasets.append(dataset)
    return datasets


def relabel(named_records: Sequence[tuple[str, Sequence[Record]]]) -> tuple[list[Record], int]:
    """Map every (dataset name, pid) to a contiguous label 0..C-1, ordered by dataset then pid.

    Datasets are ordered by first appearance; a name given twice shares its identities.
    """
    order: dict[str, int] = {}
    for name, _ in named_records:
        order.setdefault(name, len(order))
    keys = sorted({(order[name], r[1]) for name, records in named_records for r in records})
    label = {key: n for n, key in enumerate(keys)}
    out = [(path, label[(order[name], pid)], camid)
           for name, records in named_records for path, pid, camid in records]
    return out, len(keys)


def set_indices(named_records: Sequence[tuple[str, Sequence[Record]]]) -> list[int]:
    """For every record of ``relabel``'s output, the index of the entry it came from."""
    return [n for n, (_, records) in enumerate(named_records) for _ in records]


def _loader_kwargs(cfg: CfgNode) -> dict:
    workers = cfg.DATALOADER.NUM_WORKERS
    return {"num_workers": workers, "collate_fn": collate, "worker_init_fn": seed_worker,
            "pin_memory": torch.cuda.is_available()}


def build_train_loader(cfg: CfgNode, dataset_names: Sequence[str] | None = None,
                       train_transforms: bool = True) -> tuple[DataLoader, int]:
    """The training loader over DATASETS.NAMES (or ``dataset_names``) and its class count.

    ``train_transforms=False`` uses the test-time pipeline (e.g. for precise-BN statistics).
    """
    names = list(dataset_names or cfg.DATASETS.NAMES)
    datasets = load_datasets(cfg, names)
    named = [(d.name, d.combined_train() if cfg.DATASETS.COMBINEALL else d.train)
             for d in datasets]
    records, num_classes = relabel(named)
    if not records:
        raise ReidError(f"no training images in {', '.join(names)} under {cfg.DATASETS.ROOT}")
    logger.info("training set: %d images of %d identities from %s", len(records), num_classes,
                ", ".join(names))

    world, rank = comm.get_world_size(), comm.get_rank()
    # Per-set sampling weights (DATALOADER.SET_WEIGHT) refer to DATASETS.NAMES entries only.
    training_sets = dataset_names is None or names == list(cfg.DATASETS.NAMES)
    sampler = build_train_sampler(cfg, records, set_indices(named), rank=rank, world_size=world,
                                  training_sets=training_sets)
    logger.info("training sampler: %s", type(sampler).__name__)
    # Each sample's augmentations are seeded by SEED, epoch and its place in the global batch
    # sequence: the same with any number of workers or processes, and after a resume.
    generator = torch.Generator().manual_seed(int(cfg.SEED) + rank)
    loader = DataLoader(RecordDataset(records, build_transforms(cfg, is_train=train_transforms)),
                        batch_size=sampler.per_rank, sampler=AugmentationSeeds(sampler),
                        drop_last=True,
                        generator=generator,
                        persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
                        **_loader_kwargs(cfg))
    return loader, num_classes


def build_test_loader(cfg: CfgNode, dataset_name: str) -> tuple[DataLoader, int]:
    """Query then gallery of ``dataset_name`` in one loader, and the number of queries.

    With several processes each one loads a contiguous shard (InferenceSampler).
    """
    dataset = load_datasets(cfg, [dataset_name])[0]
    if not dataset.query or not dataset.gallery:
        raise ReidError(f"dataset {dataset_name} has no query / gallery split to evaluate (a "
                        "training-only set): name it in DATASETS.NAMES, not DATASETS.TESTS")
    records = dataset.query + dataset.gallery
    sampler = InferenceSampler(len(records), comm.get_rank(), comm.get_world_size())
    loader = DataLoader(RecordDataset(records, build_transforms(cfg, is_train=False)),
                        batch_size=cfg.TEST.IMS_PER_BATCH, sampler=sampler, drop_last=False,
                        **_loader_kwargs(cfg))
    return loader, len(dataset.query)
