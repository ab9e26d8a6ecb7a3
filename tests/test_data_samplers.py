"""Samplers: P x K batch composition, determinism, epochs, rank slicing, inference shards; the
FastReID 1.4 training samplers chosen by DATALOADER.SAMPLER_TRAIN (TrainingSampler,
BalancedIdentitySampler, SetReWeightSampler, ImbalancedDatasetSampler) and their selection."""
from collections import Counter

import numpy as np
import pytest

from reid.config import get_cfg
from reid.data.build import build_train_loader, set_indices
from reid.data.samplers import (SAMPLER_REGISTRY, BalancedIdentitySampler,
                                ImbalancedDatasetSampler, InferenceSampler, NaiveIdentitySampler,
                                SetReWeightSampler, ShuffledSampler, build_train_sampler)
from reid.errors import ReidError
from toys import loader_cfg, market_tree


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
    for name in ("NaiveIdentitySampler", "ShuffledSampler"):
        assert name in SAMPLER_REGISTRY
    assert "InferenceSampler" not in SAMPLER_REGISTRY  # not a training sampler
    with pytest.raises(ReidError, match="rank 2 is not in 0..world_size-1"):
        InferenceSampler(5, 2, 2)


# --------------------------------------------------- the samplers DATALOADER.SAMPLER_TRAIN chooses

def sampler_cfg(**changes):
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.DATALOADER.NUM_INSTANCE = 2
    for key, value in changes.items():
        cfg.DATALOADER[key] = value
    return cfg.freeze()


# ----------------------------------------------------------------------------- TrainingSampler

def test_training_sampler_is_the_epoch_shuffle():
    data = [(f"{i}.jpg", i % 5, 0) for i in range(23)]
    assert SAMPLER_REGISTRY.get("TrainingSampler") is ShuffledSampler
    sampler = build_train_sampler(sampler_cfg(SAMPLER_TRAIN="TrainingSampler"), data, [0] * 23)
    assert type(sampler) is ShuffledSampler
    first, second = list(sampler), list(sampler)
    assert len(first) == 16 and len(set(first)) == 16  # 2 batches of 8, no repeats in an epoch
    assert first != second


# ----------------------------------------------------------------------------- Balanced
# pid -> cameras of its images (record index order); pid 3 has a single image, pid 1 one camera
CAMERAS = {0: [0, 0, 1, 2, 2, 1], 1: [3, 3, 3, 3, 3], 2: [0, 1, 1, 1], 3: [4],
           4: [0, 1], 5: [2, 2, 2, 0, 0], 6: [1, 0, 1, 0], 7: [5, 4, 5, 4, 5, 4]}
BALANCED = [(f"{pid}_{j}.jpg", pid, cam) for pid, cams in CAMERAS.items()
            for j, cam in enumerate(cams)]


def test_balanced_batches_are_p_by_k_and_span_cameras():
    k = 3
    sampler = BalancedIdentitySampler(BALANCED, mini_batch_size=12, num_instances=k, seed=4)
    assert len(sampler) == (len(BALANCED) // 12) * 12
    for _ in range(5):  # several epochs
        for batch in chunks(list(sampler), 12):
            groups = chunks(batch, k)
            pids = [BALANCED[g[0]][1] for g in groups]
            assert len(set(pids)) == 4
            for group, pid in zip(groups, pids):
                assert all(BALANCED[i][1] == pid for i in group)
                anchor_cam = BALANCED[group[0]][2]
                other_cams = {c for c in CAMERAS[pid] if c != anchor_cam}
                if other_cams:
                    # every non-anchor image was taken by another camera than the anchor's
                    assert all(BALANCED[i][2] != anchor_cam for i in group[1:]), (pid, group)
                    others = sum(1 for c in CAMERAS[pid] if c != anchor_cam)
                    if others >= k - 1:
                        assert len(set(group[1:])) == k - 1  # no repeats when enough
                elif len(CAMERAS[pid]) > 1:
                    assert group[0] not in group[1:] and len(set(group[1:])) == k - 1
                else:
                    assert len(set(group)) == 1  # a single image, repeated


def test_balanced_pass_visits_each_identity_once():
    # 8 ids, P = 4: a pass is 2 batches holding every identity once
    sampler = BalancedIdentitySampler(BALANCED, mini_batch_size=8, num_instances=2, seed=1)
    batches = chunks(list(sampler), 8)
    pass_pids = [BALANCED[i][1] for b in batches[:2] for i in b[::2]]
    assert sorted(pass_pids) == list(range(8))


def test_balanced_camera_coverage_over_draws():
    # pid 0 has cameras {0, 1, 2}: its non-anchor images cover both other cameras over draws
    sampler = BalancedIdentitySampler(BALANCED, mini_batch_size=12, num_instances=3, seed=0)
    seen = Counter()
    for _ in range(20):
        for group in chunks(list(sampler), 3):
            if BALANCED[group[0]][1] == 0:
                seen[BALANCED[group[0]][2]] += 1
    assert set(seen) == {0, 1, 2}


# ----------------------------------------------------------------------------- SetReWeight

def two_sets(ids=(6, 6), images=4):
    """Records of set 0 (pids 0..) then set 1 (pids 100..), ``images`` each; and set ids."""
    data, set_ids = [], []
    for s, count in enumerate(ids):
        for pid in range(100 * s, 100 * s + count):
            for j in range(images):
                data.append((f"{s}_{pid}_{j}.jpg", pid, j % 2))
                set_ids.append(s)
    return data, set_ids


def set_of(data, index):
    return int(data[index][1] >= 100)


def test_integer_weights_give_exact_identities_per_set():
    data, set_ids = two_sets()
    sampler = SetReWeightSampler(data, mini_batch_size=8, num_instances=2, set_ids=set_ids,
                                 set_weights=[3, 1], seed=0)
    for _ in range(3):
        for batch in chunks(list(sampler), 8):
            groups = chunks(batch, 2)
            pids = [data[g[0]][1] for g in groups]
            assert len(set(pids)) == 4
            assert all(data[i][1] == pid for g, pid in zip(groups, pids) for i in g)
            assert Counter(set_of(data, g[0]) for g in groups) == {0: 3, 1: 1}
            assert all(len(set(g)) == 2 for g in groups)  # >= K images: no repeats


def test_fractional_weights_give_the_proportions_over_many_batches():
    # weights 1 : 2 -> set 0 should give 4 / 3 of the 4 identities per batch on average,
    # and every batch 1 or 2 of them (floor / ceil).
    data, set_ids = two_sets(ids=(8, 8))
    sampler = SetReWeightSampler(data, mini_batch_size=8, num_instances=2, set_ids=set_ids,
                                 set_weights=[1.0, 2.0], seed=3)
    per_batch = []
    for _ in range(150):  # 150 epochs x 8 batches
        for batch in chunks(list(sampler), 8):
            per_batch.append(sum(set_of(data, g[0]) == 0 for g in chunks(batch, 2)))
    assert set(per_batch) <= {1, 2}
    assert len(per_batch) == 1200
    assert np.mean(per_batch) == pytest.approx(4 / 3, abs=0.06)  # sd of the mean ~0.014


def test_identities_per_set_add_up_and_zero_weight_is_never_drawn():
    data, set_ids = two_sets(ids=(6, 6, 6))
    sampler = SetReWeightSampler(data, 8, 2, set_ids=set_ids, set_weights=[1, 0, 1], seed=2)
    rng = np.random.default_rng(0)
    counts = np.array([sampler.identities_per_set(rng) for _ in range(200)])
    assert (counts.sum(axis=1) == 4).all() and (counts[:, 1] == 0).all()
    assert (counts[:, 0] == 2).all()  # 4 * 1/2 is exact
    used = {set_ids[i] for i in sampler}
    assert used == {0, 2}


@pytest.mark.parametrize("weights, message", [
    ([1], r"SET_WEIGHT has 1 weight\(s\) but the training data comes from 2 set\(s\)"),
    ([], r"SET_WEIGHT has 0 weight\(s\)"),
    ([1, -1], r"must be finite weights >= 0 with a positive sum; got \[1.0, -1.0\]"),
    ([0, 0], r"must be finite weights >= 0 with a positive sum"),
])
def test_set_weight_errors(weights, message):
    data, set_ids = two_sets()
    with pytest.raises(ReidError, match=message):
        SetReWeightSampler(data, 8, 2, set_ids=set_ids, set_weights=weights)


def test_a_set_with_too_few_identities_is_an_error():
    data, set_ids = two_sets(ids=(6, 2))
    with pytest.raises(ReidError, match=r"training set 1 \(DATASETS.NAMES entry 1\) has 2 "
                                        r"identities, fewer than the 3 a batch takes from it"):
        SetReWeightSampler(data, 8, 2, set_ids=set_ids, set_weights=[1, 3])


# ----------------------------------------------------------------------------- Imbalanced

def test_imbalanced_weights_are_inverse_identity_frequencies():
    sizes = {0: 1, 1: 2, 2: 5, 3: 8}
    data = [(f"{pid}_{j}.jpg", pid, 0) for pid, n in sizes.items() for j in range(n)]
    sampler = ImbalancedDatasetSampler(data, mini_batch_size=4, seed=0)
    expected = [1.0 / sizes[pid] for _, pid, _ in data]
    assert sampler.weights.tolist() == expected  # exact: 1 / count
    draws = Counter()
    for _ in range(250):  # 250 epochs x 16 draws = 4000 draws
        draws.update(data[i][1] for i in sampler)
    total = sum(draws.values())
    assert total == 4000
    for pid in sizes:  # each identity 1/4 of the draws
        assert draws[pid] / total == pytest.approx(0.25, abs=0.03)


# ----------------------------------------------------------------------------- selection

@pytest.mark.parametrize("changes, cls", [
    (dict(SAMPLER_TRAIN="", PK_SAMPLER=True, NAIVE_WAY=True), NaiveIdentitySampler),
    (dict(SAMPLER_TRAIN="", PK_SAMPLER=True, NAIVE_WAY=False), BalancedIdentitySampler),
    (dict(SAMPLER_TRAIN="", PK_SAMPLER=False, NAIVE_WAY=True), ShuffledSampler),
    (dict(SAMPLER_TRAIN="NaiveIdentitySampler", PK_SAMPLER=False), NaiveIdentitySampler),
    (dict(SAMPLER_TRAIN="BalancedIdentitySampler"), BalancedIdentitySampler),
    (dict(SAMPLER_TRAIN="ImbalancedDatasetSampler"), ImbalancedDatasetSampler),
    (dict(SAMPLER_TRAIN="SetReWeightSampler", SET_WEIGHT=[1, 1]), SetReWeightSampler),
])
def test_sampler_chosen_by_config(changes, cls):
    data, set_ids = two_sets()
    assert type(build_train_sampler(sampler_cfg(**changes), data, set_ids)) is cls


def test_unknown_or_non_training_sampler_names():
    data, set_ids = two_sets()
    with pytest.raises(ReidError, match=r"unknown sampler \(DATALOADER.SAMPLER_TRAIN\) "
                                        r"'NaiveIdentitySamplr'; did you mean "
                                        r"'NaiveIdentitySampler'"):
        build_train_sampler(sampler_cfg(SAMPLER_TRAIN="NaiveIdentitySamplr"), data, set_ids)
    with pytest.raises(ReidError, match=r"unknown sampler \(DATALOADER.SAMPLER_TRAIN\) "
                                        r"'InferenceSampler'.*SetReWeightSampler"):
        build_train_sampler(sampler_cfg(SAMPLER_TRAIN="InferenceSampler"), data, set_ids)


def test_set_indices_follow_the_named_entries():
    named = [("A", [("a1", 0, 0), ("a2", 1, 0)]), ("B", [("b1", 0, 1)]), ("A", [("a3", 2, 0)])]
    assert set_indices(named) == [0, 0, 1, 2]


def test_loader_with_set_weights_and_its_precise_bn_fallback(tmp_path):
    market_tree(tmp_path / "Market-1501-v15.09.15")
    # the same set twice: two entries, one weight each (2 + 2 identities per batch of 4 x 2)
    cfg = loader_cfg(tmp_path, DATASETS__NAMES=("Market1501", "Market1501"),
                     DATALOADER__SAMPLER_TRAIN="SetReWeightSampler",
                     DATALOADER__SET_WEIGHT=[1.0, 1.0], DATALOADER__NUM_INSTANCE=2)
    loader, _ = build_train_loader(cfg)
    sampler = loader.sampler.sampler  # inside AugmentationSeeds
    assert isinstance(sampler, SetReWeightSampler)
    half = len(sampler.set_members[0]) * 4  # records of entry 0 come first
    batch_indices = next(iter(chunks(list(sampler), 8)))
    assert sum(i < half for i in batch_indices) == 4
    # a loader over other sets (precise-BN) cannot use per-entry weights: seed-style sampler
    loader, _ = build_train_loader(cfg, dataset_names=("Market1501",), train_transforms=False)
    assert type(loader.sampler.sampler) is NaiveIdentitySampler
