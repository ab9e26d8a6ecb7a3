"""Index samplers for training (P x K identity batches, shuffled, re-weighted) and inference.

Training samplers build the *global* batch sequence of an epoch from ``seed + epoch``, so it is
the same on every process; each process then yields its contiguous slice of every global batch.
The epoch advances by itself at every ``iter()``; ``set_epoch(e)`` sets it (e.g. on resume).
An epoch has ``len(data_source) // mini_batch_size`` batches (about one pass over the images).

Training samplers are chosen by ``DATALOADER.SAMPLER_TRAIN`` (FastReID 1.4 names) through
``SAMPLER_REGISTRY``; an empty name keeps the seed's ``PK_SAMPLER`` / ``NAIVE_WAY`` choice.
Each one is built by ``cls.from_config(cfg, data_source, set_ids, rank, world_size)``.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from reid.errors import ReidError
from reid.utils.registry import Registry

logger = logging.getLogger(__name__)

SAMPLER_REGISTRY = Registry("sampler (DATALOADER.SAMPLER_TRAIN)")

# The seed's switches -> sampler: (PK_SAMPLER, NAIVE_WAY) -> name (FastReID before 1.4).
SEED_STYLE_SAMPLERS = {
    (True, True): "NaiveIdentitySampler",
    (True, False): "BalancedIdentitySampler",
    (False, True): "TrainingSampler",
    (False, False): "TrainingSampler",
}


class EpochSampler(Sampler[int]):
    """Base of the training samplers: rank slicing, epochs and length.

    An index sampler (a DataLoader's ``sampler``: it yields dataset indices, this process's
    slice of every global batch), not a batch sampler. Subclasses implement
    ``global_batches(epoch) -> list[list[int]]`` returning ``num_batches`` batches of
    ``mini_batch_size`` dataset indices.
    """

    # True for samplers configured per DATASETS.NAMES entry (they only fit the training sets)
    needs_training_sets = False

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

    @classmethod
    def from_config(cls, cfg: Any, data_source: Sequence[tuple], set_ids: Sequence[int],
                    rank: int = 0, world_size: int = 1) -> "EpochSampler":
        """Built from SOLVER.IMS_PER_BATCH, DATALOADER.NUM_INSTANCE and SEED; ``set_ids[i]`` is
        the DATASETS.NAMES entry record ``i`` comes from (used by set-aware samplers)."""
        return cls(data_source, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE,
                   seed=cfg.SEED, rank=rank, world_size=world_size)

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


class IdentitySampler(EpochSampler):
    """Base of the P x K samplers: batches of P identities x K images each
    (``mini_batch_size = P * K``, K = num_instances), an identity's K images contiguous.
    ``data_source`` holds ``(img_path, pid, camid)`` records. Subclasses build one pass over
    the identities (``_one_pass``); passes repeat until the epoch is full."""

    def __init__(self, data_source: Sequence[tuple], mini_batch_size: int, num_instances: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        name = type(self).__name__
        if num_instances < 1 or mini_batch_size % num_instances:
            raise ReidError(f"{name}: the batch size {mini_batch_size} must be a "
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
            raise ReidError(f"{name}: the training set has {len(self.pid_index)} "
                            f"identities, fewer than the {self.num_pids_per_batch} per batch "
                            f"(SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE)")

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = self.epoch_rng(epoch)
        batches: list[list[int]] = []
        while len(batches) < self.num_batches:
            batches.extend(self._one_pass(rng))
        return batches[: self.num_batches]

    def _one_pass(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError


@SAMPLER_REGISTRY.register()
class NaiveIdentitySampler(IdentitySampler):
    """P x K batches; identities drawn uniformly, images without replacement within a pass.

    An identity's images are used without replacement while it has >= K left; an identity with
    fewer than K images in all contributes K drawn with replacement. Identities leave the pool
    when fewer than K of their images remain; when fewer than P identities remain, a new pass
    over the data starts.
    """

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


@SAMPLER_REGISTRY.register(aliases=("TrainingSampler",))
class ShuffledSampler(EpochSampler):
    """A seeded random permutation per epoch, cut into global batches (no identity balance).

    FastReID's ``TrainingSampler``: its infinite stream of permutations, cut here at epochs
    (the ``len % batch`` images left over by a permutation are not used in that epoch).
    """

    def __init__(self, data_source: Sequence[tuple], mini_batch_size: int, num_instances: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(data_source), mini_batch_size, seed, rank, world_size)
        self.num_items = len(data_source)

    def global_batches(self, epoch: int) -> list[list[int]]:
        order = self.epoch_rng(epoch).permutation(self.num_items)
        b = self.mini_batch_size
        return [order[i * b:(i + 1) * b].tolist() for i in range(self.num_batches)]


def pick(rng: np.random.Generator, pool: Sequence[int], count: int) -> list[int]:
    """``count`` items of ``pool``: without replacement when it has enough, else with."""
    return [int(i) for i in rng.choice(pool, size=count, replace=len(pool) < count)]


@SAMPLER_REGISTRY.register()
class BalancedIdentitySampler(IdentitySampler):
    """P x K batches whose K images of an identity span its cameras (FastReID's balanced way).

    A pass visits every identity once in random order (the last ``ids % P`` are left for the
    next pass). For each identity an anchor image is drawn; the other K - 1 come from the
    identity's images taken by *other* cameras than the anchor's (with replacement only when
    there are fewer than K - 1 of them); an identity seen by one camera only takes its other
    images instead, and an identity with a single image repeats it.
    """

    def __init__(self, data_source: Sequence[tuple], mini_batch_size: int, num_instances: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(data_source, mini_batch_size, num_instances, seed, rank, world_size)
        self.camids = [record[2] for record in data_source]

    def _one_pass(self, rng: np.random.Generator) -> list[list[int]]:
        pids = list(self.pid_index)
        p = self.num_pids_per_batch
        order = rng.permutation(len(pids))
        order = order[: len(order) - len(order) % p]
        return [sum((self._group(rng, pids[i]) for i in order[b:b + p]), [])
                for b in range(0, len(order), p)]

    def _group(self, rng: np.random.Generator, pid: int) -> list[int]:
        images = self.pid_index[pid]
        anchor = int(rng.choice(images))
        other_cameras = [i for i in images if self.camids[i] != self.camids[anchor]]
        pool = other_cameras or [i for i in images if i != anchor] or [anchor]
        return [anchor] + pick(rng, pool, self.num_instances - 1)


@SAMPLER_REGISTRY.register()
class SetReWeightSampler(IdentitySampler):
    """P x K batches whose identities come from the training sets in proportion to weights.

    ``set_ids[i]`` is the set (DATASETS.NAMES entry) of record ``i``; set ``s`` gets a share
    ``w_s / sum(w)`` of the P identities of every batch: ``floor(P * share)`` identities, plus
    one more with probability equal to the fractional part (systematic sampling, so the counts
    add up to P and their expectation is exactly ``P * share``; integer weights summing to P
    give those exact counts, as FastReID's). Identities are drawn uniformly within their set
    without replacement, and K images each (with replacement only below K). The order of the
    identity groups in a batch is shuffled.
    """

    needs_training_sets = True

    def __init__(self, data_source: Sequence[tuple], mini_batch_size: int, num_instances: int,
                 set_ids: Sequence[int], set_weights: Sequence[float], seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(data_source, mini_batch_size, num_instances, seed, rank, world_size)
        weights = np.asarray(list(set_weights), dtype=np.float64)
        if len(set_ids) != len(data_source):
            raise ValueError(f"{len(set_ids)} set ids for {len(data_source)} records")
        self.set_probs = self._probabilities(weights, max(set_ids, default=0) + 1)
        members: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, (record, set_id) in enumerate(zip(data_source, set_ids)):
            members[set_id][record[1]].append(i)
        self.set_members = [dict(sorted(members[s].items())) for s in range(len(weights))]
        self._check_capacity()

    @classmethod
    def from_config(cls, cfg: Any, data_source: Sequence[tuple], set_ids: Sequence[int],
                    rank: int = 0, world_size: int = 1) -> "SetReWeightSampler":
        return cls(data_source, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE,
                   set_ids=set_ids, set_weights=cfg.DATALOADER.SET_WEIGHT, seed=cfg.SEED,
                   rank=rank, world_size=world_size)

    @staticmethod
    def _probabilities(weights: np.ndarray, num_sets: int) -> np.ndarray:
        if len(weights) != num_sets:
            raise ReidError(f"SetReWeightSampler: DATALOADER.SET_WEIGHT has {len(weights)} "
                            f"weight(s) but the training data comes from {num_sets} set(s) "
                            f"(DATASETS.NAMES); give one weight per set")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ReidError(f"SetReWeightSampler: DATALOADER.SET_WEIGHT must be finite weights "
                            f">= 0 with a positive sum; got {weights.tolist()}")
        return weights / weights.sum()

    def _check_capacity(self) -> None:
        for s, (prob, members) in enumerate(zip(self.set_probs, self.set_members)):
            most = math.ceil(self.num_pids_per_batch * prob - 1e-9)
            if len(members) < most:
                raise ReidError(f"SetReWeightSampler: training set {s} (DATASETS.NAMES entry "
                                f"{s}) has {len(members)} identities, fewer than the {most} a "
                                f"batch takes from it (DATALOADER.SET_WEIGHT)")

    def identities_per_set(self, rng: np.random.Generator) -> np.ndarray:
        """How many of the P identities of one batch each set gives (sums to P)."""
        exact = self.num_pids_per_batch * self.set_probs
        counts = np.floor(exact + 1e-9)
        # One uniform offset u; set s gets an extra identity for each integer in
        # [cum_s - u, cum_{s+1} - u): probability frac_s, and the extras sum to the remainder.
        cumulative = np.round(np.concatenate([[0.0], np.cumsum(exact - counts)]), 9)
        extra = np.diff(np.ceil(cumulative - rng.random()))
        return (counts + extra).astype(int)

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = self.epoch_rng(epoch)
        return [self._batch(rng) for _ in range(self.num_batches)]

    def _batch(self, rng: np.random.Generator) -> list[int]:
        groups = []
        for members, count in zip(self.set_members, self.identities_per_set(rng)):
            pids = list(members)
            for j in rng.choice(len(pids), size=count, replace=False):
                groups.append(pick(rng, members[pids[j]], self.num_instances))
        return sum((groups[j] for j in rng.permutation(len(groups))), [])


@SAMPLER_REGISTRY.register()
class ImbalancedDatasetSampler(EpochSampler):
    """Images drawn with replacement, each with weight ``1 / (images of its identity)``, so
    every identity is drawn equally often in expectation (``weights`` holds them)."""

    def __init__(self, data_source: Sequence[tuple], mini_batch_size: int, num_instances: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(data_source), mini_batch_size, seed, rank, world_size)
        labels = [record[1] for record in data_source]
        frequency: dict[int, int] = defaultdict(int)
        for label in labels:
            frequency[label] += 1
        self.weights = np.array([1.0 / frequency[label] for label in labels])

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = self.epoch_rng(epoch)
        b = self.mini_batch_size
        draws = rng.choice(len(self.weights), size=self.num_batches * b, replace=True,
                           p=self.weights / self.weights.sum())
        return [draws[i * b:(i + 1) * b].tolist() for i in range(self.num_batches)]


def seed_style_sampler_name(cfg: Any) -> str:
    """The sampler the seed's DATALOADER.PK_SAMPLER / NAIVE_WAY select."""
    return SEED_STYLE_SAMPLERS[(cfg.DATALOADER.PK_SAMPLER, cfg.DATALOADER.NAIVE_WAY)]


def train_sampler_name(cfg: Any) -> str:
    """DATALOADER.SAMPLER_TRAIN, or the sampler the seed's PK_SAMPLER / NAIVE_WAY select."""
    return cfg.DATALOADER.SAMPLER_TRAIN or seed_style_sampler_name(cfg)


def build_train_sampler(cfg: Any, data_source: Sequence[tuple], set_ids: Sequence[int],
                        rank: int = 0, world_size: int = 1,
                        training_sets: bool = True) -> EpochSampler:
    """The training sampler the config names, over ``data_source`` records.

    ``training_sets=False`` (a loader over other sets than DATASETS.NAMES, e.g. precise-BN's)
    replaces a sampler configured per training set by the seed-style choice.
    """
    name = train_sampler_name(cfg)
    sampler_cls = SAMPLER_REGISTRY.get(name)
    if not training_sets and getattr(sampler_cls, "needs_training_sets", False):
        name = seed_style_sampler_name(cfg)
        logger.info("%s applies to DATASETS.NAMES only; this loader uses %s",
                    sampler_cls.__name__, name)
        sampler_cls = SAMPLER_REGISTRY.get(name)
    return sampler_cls.from_config(cfg, data_source, set_ids, rank, world_size)


class InferenceSampler(Sampler[int]):
    """Indices ``0..size-1`` in order, cut into contiguous shards, one per process. Not in
    SAMPLER_REGISTRY, which holds the training samplers DATALOADER.SAMPLER_TRAIN names.

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
