"""Samplers: P x K batch composition, determinism, epochs, rank slicing, inference shards."""

import pytest

from reid.data.samplers import (SAMPLER_REGISTRY, InferenceSampler, NaiveIdentitySampler,
                                ShuffledSampler)
from reid.errors import ReidError


def records(counts: dict[int, int]) -> list[tuple]:
    """Records with ``counts[pid]`` images per identity, interleaved so indices mix ids."""
    out, left = [], dict(counts)
    while any(left.values()):
        for pid in counts:
            if left[pid]:
                out.append((f"{pid}_{left[pid]}.jpg", pid, left[pid] % 3))
                left[pid] -= 1
    return out


# 12 ids; two have fewer images than K = 4 (sampled with replacement)
DATA = records({pid: n for pid, n in zip(range(12), [9, 8, 7, 6, 5, 4, 4, 4, 10, 3, 2, 12])})


def chunks(seq, size):
    return [list(seq[i:i + size]) for i in range(0, len(seq), size)]


def test_batches_hold_p_distinct_ids_with_k_images_each():
    sampler = NaiveIdentitySampler(DATA, mini_batch_size=12, num_instances=4, seed=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == (len(DATA) // 12) * 12
    for batch in chunks(indices, 12):
        groups = chunks(batch, 4)
        pids = [DATA[g[0]][1] for g in groups]
        assert len(set(pids)) == 3, "P distinct identities per batch"
        for group, pid in zip(groups, pids):
            assert all(DATA[i][1] == pid for i in group), "K contiguous images of one id"
            n_images = sum(1 for r in DATA if r[1] == pid)
            if n_images >= 4:
                assert len(set(group)) == 4, "no repeats when the id has >= K images"


def test_an_identity_is_used_without_replacement_within_a_pass():
    # 8 ids x 4 images, batch 2 x 4: one pass uses every image once, and an epoch is one pass
    data = records({pid: 4 for pid in range(8)})
    sampler = NaiveIdentitySampler(data, mini_batch_size=8, num_instances=4, seed=0)
    assert sorted(sampler) == list(range(len(data)))


def test_same_seed_same_sequence_and_epochs_differ():
    a = NaiveIdentitySampler(DATA, 12, 4, seed=7)
    b = NaiveIdentitySampler(DATA, 12, 4, seed=7)
    epoch0, epoch1 = list(a), list(a)  # iterating advances the epoch
    assert epoch0 == list(b) and epoch0 != epoch1
    b.set_epoch(1)
    assert list(b) == epoch1
    assert list(NaiveIdentitySampler(DATA, 12, 4, seed=8)) != epoch0


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_yield_contiguous_slices_of_the_global_batch(world_size):
    batch = 12 if world_size == 3 else 8
    whole = list(NaiveIdentitySampler(DATA, batch, 4, seed=3))
    per_rank = [list(NaiveIdentitySampler(DATA, batch, 4, seed=3, rank=r, world_size=world_size))
                for r in range(world_size)]
    assert all(len(p) == len(whole) // world_size for p in per_rank)
    size = batch // world_size
    for b, global_batch in enumerate(chunks(whole, batch)):
        rebuilt = sum((p[b * size:(b + 1) * size] for p in per_rank), [])
        assert rebuilt == global_batch


def test_per_rank_batch_must_be_a_multiple_of_k():
    with pytest.raises(ReidError, match=r"each process's batch \(4 = 8 / 2 processes\) must be "
                                        r"a multiple of DATALOADER.NUM_INSTANCE \(8\)"):
        NaiveIdentitySampler(DATA, 8, 8, rank=0, world_size=2)
    with pytest.raises(ReidError, match="multiple of num_instances 4"):
        NaiveIdentitySampler(DATA, 10, 4)
    with pytest.raises(ReidError, match="multiple of the number of processes"):
        NaiveIdentitySampler(DATA, 12, 4, world_size=5)
    with pytest.raises(ReidError, match=r"the seed \(SEED\) must be >= 0, got -3"):
        ShuffledSampler(DATA, 12, seed=-3)


def test_too_few_identities_or_images():
    with pytest.raises(ReidError, match="has 12 identities, fewer than the 16 per batch"):
        NaiveIdentitySampler(DATA, 64, 4)
    with pytest.raises(ReidError, match="74 training images are fewer than one batch of 128"):
        NaiveIdentitySampler(DATA, 128, 4)


def test_identity_with_fewer_than_k_images_is_sampled_with_replacement():
    data = records({0: 2, 1: 5, 2: 5, 3: 5})
    sampler = NaiveIdentitySampler(data, 8, 4, seed=0)
    seen = [i for i in sampler if data[i][1] == 0]
    for group in chunks(seen, 4):
        assert len(group) == 4 and set(group) <= {i for i, r in enumerate(data) if r[1] == 0}


def test_shuffled_sampler_is_a_seeded_permutation_per_epoch():
    sampler = ShuffledSampler(DATA, 16, seed=2)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 64
    assert len(set(first)) == 64 and set(first) <= set(range(len(DATA)))
    assert first != second
    assert list(ShuffledSampler(DATA, 16, seed=2)) == first
    halves = [list(ShuffledSampler(DATA, 16, seed=2, rank=r, world_size=2)) for r in (0, 1)]
    assert sum((halves[0][i:i + 8] + halves[1][i:i + 8] for i in range(0, 32, 8)), []) == first


@pytest.mark.parametrize("size, world_size", [(10, 1), (10, 3), (2, 4), (0, 2), (17, 4)])
def test_inference_sampler_shards_cover_everything_once_in_order(size, world_size):
    shards = [list(InferenceSampler(size, r, world_size)) for r in range(world_size)]
    assert sum(shards, []) == list(range(size))
    assert [len(InferenceSampler(size, r, world_size)) for r in range(world_size)] == \
        [len(s) for s in shards]


def test_registry_names():
    for name in ("NaiveIdentitySampler", "ShuffledSampler", "InferenceSampler"):
        assert name in SAMPLER_REGISTRY
    with pytest.raises(ReidError, match="rank 2 is not in 0..world_size-1"):
        InferenceSampler(5, 2, 2)
