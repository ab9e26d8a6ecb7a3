"""Index samplers for training (identity-balanced P x K, or shuffled) and inference (shards).

Training samplers build the *global* batch sequence of an epoch from ``seed + epoch``, so it is
the same on every process; each process then yields its contiguous slice of every global batch.
The epoch advances by itself at every ``iter()``; ``set_epoch(e)`` sets it (e.g. on resume).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from reid.errors import ReidError
from reid.utils.registry import Registry

SAMPLER_REGISTRY = Registry("sampler")


class EpochBatchSampler(Sampler[int]):
    """Base of the training samplers: rank slicing, epochs and length.

    Subclasses implement ``global_batches(epoch) -> list[list[int]]`` returning ``num_batches``
    batches of ``mini_batch_size`` dataset indices.
    """

    def __init__(self, num_items: int, mini_batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, unit: int = 1, unit_name: str = "1") -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ReidError(f"{type(self).__name__}: rank {rank} is not in 0..world_size-1 "
                            f"(world_size {world_size})")
        if mini_batch_size < 1 or mini_batch_size % world_size:
            raise ReidError(f"{type(self).__name__}: the global batch size {mini_batch_size} "
                            f"(SOLVER.IMS_PER_BATCH) must be a positive multiple of the number "
                            f"of processes ({world_size})")
        self.per_rank = mini_batch_size // world_size
        if self.per_rank % unit:
            raise ReidError(f"{type(self).__name__}: each process's batch ({self.per_rank} = "
                            f"{mini_batch_size} / {world_size} processes) must be a multiple of "
                            f"{unit_name} ({unit}) so that no identity is split across processes")
        if seed < 0:
            raise ReidError(f"{type(self).__name__}: the seed (SEED) must be >= 0, got {seed}")
        if num_items < mini_batch_size:
            raise ReidError(f"{type(self).__name__}: {num_items} training images are fewer "
                            f"than one batch of {mini_batch_size} (SOLVER.IMS_PER_BATCH)")
        self.mini_batch_size = mini_batch_size
        self.num_batches = num_items // mini_batch_size  # about one pass over the data
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def global_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        start = self.rank * self.per_rank
        for batch in self.global_batches(epoch):
            yield from batch[start:start + self.per_rank]

    def __len__(self) -> int:
        return self.num_batches * self.per_rank


@SAMPLER_REGISTRY.register()
class NaiveIdentitySampler(EpochBatchSampler):
    """Batches of P identities x K images (``mini_batch_size = P * K``, K = num_instances).

    An identity's images are used without replacement while it has >= K left; an identity with
    fewer than K images in all contributes K drawn with replacement. Identities leave the pool
    when fewer than K of their images remain; when fewer than P identities remain, a new pass
    over the data starts, until the epoch has ``len(data_source) // mini_batch_size`` batches.
    ``data_source`` holds ``(img_path, pid, camid)`` records.
    """

    def __init__(self, data_source: Sequence[tuple], mini_batch_size: int, num_instances: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_instances < 1 or mini_batch_size % num_instances:
            raise ReidError(f"NaiveIdentitySampler: the batch size {mini_batch_size} must be a "
                            f"multiple of num_instances {num_instances} (DATALOADER.NUM_INSTANCE)")
        super().__init__(len(data_source), mini_batch_size, seed, rank, world_size,
                         unit=num_instances, unit_name="DATALOADER.NUM_INSTANCE")
        self.num_instances = num_instances
        self.num_pids_per_batch = mini_batch_size // num_instances
        index = defaultdict(list)
        for i, record in enumerate(data_source):
            index[record[1]].append(i)
        self.pid_index = {pid: index[pid] for pid in sorted(index)}
        if len(self.pid_index) < self.num_pids_per_batch:
            raise ReidError(f"NaiveIdentitySampler: the training set has {len(self.pid_index)} "
                            f"identities, fewer than the {self.num_pids_per_batch} per batch "
                            f"(SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE)")

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = self.epoch_rng(epoch)
        batches: list[list[int]] = []
        while len(batches) < self.num_batches:
            batches.extend(self._one_pass(rng))
        return batches[: self.num_batches]

    def _one_pass(self, rng: np.random.Generator) -> list[list[int]]:
        k = self.num_instances
        pools = {}
        for pid, idxs in self.pid_index.items():
            pool = list(rng.choice(idxs, size=k, replace=True)) if len(idxs) < k else list(idxs)
            rng.shuffle(pool)
            pools[pid] = [int(i) for i in pool]
        available = list(pools)
        batches = []
        while len(available) >= self.num_pids_per_batch:
            chosen = rng.choice(len(available), size=self.num_pids_per_batch, replace=False)
            pids = [available[i] for i in chosen]
            batch = []
            for pid in pids:
                batch += pools[pid][:k]
                del pools[pid][:k]
                if len(pools[pid]) < k:
                    available.remove(pid)
            batches.append(batch)
        return batches


@SAMPLER_REGISTRY.register()
class ShuffledSampler(EpochBatchSampler):
    """A seeded random permutation per epoch, cut into global batches (no identity balance)."""

    def __init__(self, data_source: Sequence[tuple], mini_batch_size: int, num_instances: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(data_source), mini_batch_size, seed, rank, world_size)
        self.num_items = len(data_source)

    def global_batches(self, epoch: int) -> list[list[int]]:
        order = self.epoch_rng(epoch).permutation(self.num_items)
        b = self.mini_batch_size
        return [order[i * b:(i + 1) * b].tolist() for i in range(self.num_batches)]


@SAMPLER_REGISTRY.register()
class InferenceSampler(Sampler[int]):
    """Indices ``0..size-1`` in order, cut into contiguous shards, one per process.

    Concatenating the shards of ranks 0, 1, ... gives every index exactly once, in order.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ReidError(f"InferenceSampler: rank {rank} is not in 0..world_size-1 "
                            f"(world_size {world_size})")
        shard = -(-size // world_size)  # ceil: the last shards may be shorter (or empty)
        self.begin = min(size, shard * rank)
        self.end = min(size, shard * (rank + 1))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin
