"""Loaders: batch dicts, relabelling, query-then-gallery order, workers, unreadable images."""
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oracles import bicubic_chw
from reid.data.build import build_test_loader, build_train_loader, read_image, relabel
from reid.data.samplers import NaiveIdentitySampler, ShuffledSampler
from reid.errors import ReidError, one_line
from reid.utils import comm
from toys import (MARKET_SIZE, MARKET_TEST_PIDS, MARKET_TRAIN_PIDS, loader_cfg,
                  market_tree)

H, W = MARKET_SIZE
TRAIN_PIDS, TEST_PIDS = MARKET_TRAIN_PIDS, MARKET_TEST_PIDS


@pytest.fixture
def root(tmp_path) -> Path:
    market_tree(tmp_path / "Market-1501-v15.09.15")
    return tmp_path


def pid_of(path: str) -> int:
    return int(Path(path).name.split("_")[0])


def reference_image(path: str) -> torch.Tensor:
    """Independent reference of the test-time pipeline: PIL bicubic resize, CHW float 0..255."""
    return bicubic_chw(Image.open(path).convert("RGB"), H, W)


def test_train_batches(root):
    loader, num_classes = build_train_loader(loader_cfg(root))
    assert num_classes == len(TRAIN_PIDS)
    assert isinstance(loader.sampler.sampler, NaiveIdentitySampler)  # in AugmentationSeeds
    batches = list(loader)
    assert len(batches) == len(loader) == 24 // 8
    for batch in batches:
        assert set(batch) == {"images", "targets", "camids", "img_paths"}
        assert batch["images"].dtype == torch.float32 and batch["images"].shape == (8, 3, H, W)
        assert 0 <= batch["images"].min() and batch["images"].max() <= 255
        assert batch["images"].max() > 200
        assert batch["targets"].dtype == torch.int64 and batch["camids"].dtype == torch.int64
        # labels are the pids' ranks: contiguous 0..C-1 in pid order
        expected = [TRAIN_PIDS.index(pid_of(p)) for p in batch["img_paths"]]
        assert batch["targets"].tolist() == expected
        assert batch["camids"].tolist() == [int(Path(p).name.split("_")[1][1]) - 1
                                            for p in batch["img_paths"]]
        assert len(set(batch["targets"].tolist())) == 2  # P = 8 / 4 identities


def test_test_loader_is_query_then_gallery_with_raw_pids(root):
    loader, num_query = build_test_loader(loader_cfg(root), "Market1501")
    batches = list(loader)
    paths = sum((b["img_paths"] for b in batches), [])
    targets = torch.cat([b["targets"] for b in batches]).tolist()
    assert num_query == 6
    assert all("/query/" in p for p in paths[:6])
    assert all("/bounding_box_test/" in p for p in paths[6:]) and len(paths) == 6 + 13
    assert targets == [pid_of(p) for p in paths] and 0 in targets and -1 not in targets
    assert [len(b["img_paths"]) for b in batches] == [5, 5, 5, 4]
    for b in batches:
        for img, path in zip(b["images"], b["img_paths"]):
            assert torch.equal(img, reference_image(path))


def test_train_loader_with_test_transforms(root):
    loader, _ = build_train_loader(loader_cfg(root, INPUT__REA__ENABLED=True),
                                   train_transforms=False)
    batch = next(iter(loader))
    for img, path in zip(batch["images"], batch["img_paths"]):
        assert torch.equal(img, reference_image(path))


def test_combineall_adds_query_and_gallery_identities(root):
    loader, num_classes = build_train_loader(loader_cfg(root, DATASETS__COMBINEALL=True))
    assert num_classes == len(TRAIN_PIDS) + len(TEST_PIDS)  # distractor pid 0 left out
    assert len(loader.dataset) == 24 + 6 + 12


def test_relabel_keeps_datasets_apart():
    named = [("A", [("a1", 5, 0), ("a2", 2, 1)]), ("B", [("b1", 5, 0), ("b2", 9, 0)]),
             ("A", [("a3", 2, 0)])]
    records, num = relabel(named)
    assert num == 4
    assert records == [("a1", 1, 0), ("a2", 0, 1), ("b1", 2, 0), ("b2", 3, 0), ("a3", 0, 0)]


def test_two_datasets_get_disjoint_labels(root):
    market_tree(root / "SyntheticMarket1501" / "Market-1501-v15.09.15")
    cfg = loader_cfg(root, DATASETS__NAMES=("Market1501", "SyntheticMarket1501"))
    loader, num_classes = build_train_loader(cfg)
    assert num_classes == 2 * len(TRAIN_PIDS)
    labels = {}
    for path, label, _ in loader.dataset.records:
        labels.setdefault(("Synthetic" in path, pid_of(path)), set()).add(label)
    assert all(len(v) == 1 for v in labels.values())
    assert sorted(v.pop() for v in labels.values()) == list(range(12))


def test_shuffled_sampler_and_per_rank_batch(root, monkeypatch):
    loader, _ = build_train_loader(loader_cfg(root, DATALOADER__PK_SAMPLER=False))
    assert isinstance(loader.sampler.sampler, ShuffledSampler)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    loader, _ = build_train_loader(loader_cfg(root))
    assert loader.batch_size == 4 and loader.sampler.sampler.rank == 1 and len(loader) == 3
    test_loader, _ = build_test_loader(loader_cfg(root), "Market1501")
    assert list(test_loader.sampler) == list(range(10, 19))


def test_workers_give_reproducible_batches(root):
    cfg = loader_cfg(root, DATALOADER__NUM_WORKERS=1, INPUT__REA__ENABLED=True)
    first = [b["images"] for b in build_train_loader(cfg)[0]]
    second = [b["images"] for b in build_train_loader(cfg)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# Random flip, padding crop and erasing: every sample's augmentation is seeded by SEED, the
# epoch and its place in the global batch sequence.
AUGMENTED = dict(INPUT__DO_FLIP=True, INPUT__DO_PAD=True, INPUT__PADDING=4,
                 INPUT__REA__ENABLED=True)


def epoch_images(loader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return [b["images"] for b in loader]


def test_augmentations_do_not_depend_on_the_number_of_workers(root):
    batches = {workers: epoch_images(build_train_loader(loader_cfg(
        root, DATALOADER__NUM_WORKERS=workers, **AUGMENTED))[0], 1) for workers in (0, 2)}
    assert len(batches[0]) == 3
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))
    # and they are random: two epochs differ, as do two seeds
    loader = build_train_loader(loader_cfg(root, **AUGMENTED))[0]
    assert not torch.equal(epoch_images(loader, 1)[0], epoch_images(loader, 2)[0])


def test_a_resumed_epoch_is_augmented_as_in_the_uninterrupted_run(root):
    loader = build_train_loader(loader_cfg(root, **AUGMENTED))[0]
    uninterrupted = [[b["images"] for b in loader] for _ in range(3)]  # epochs 0, 1, 2
    resumed = build_train_loader(loader_cfg(root, **AUGMENTED))[0]
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted[2], epoch_images(resumed, 2)))


def test_two_processes_see_the_slices_of_the_single_process_batches(root, monkeypatch):
    single = epoch_images(build_train_loader(loader_cfg(root, **AUGMENTED))[0], 0)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        per_rank.append(epoch_images(build_train_loader(loader_cfg(root, **AUGMENTED))[0], 0))
    for whole, first, second in zip(single, *per_rank):
        assert torch.equal(whole, torch.cat([first, second]))


def test_seeded_augmentation_leaves_the_callers_random_state_alone(root):
    loader = build_train_loader(loader_cfg(root, **AUGMENTED))[0]
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    list(loader)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_is_a_one_line_error_naming_the_file(root, workers):
    bad = root / "Market-1501-v15.09.15" / "bounding_box_train" / "0003_c1s1_000100_01.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    loader, _ = build_train_loader(loader_cfg(root, DATALOADER__NUM_WORKERS=workers))
    with pytest.raises(ReidError) as err:
        for _ in loader:
            pass
    if workers:
        assert "DataLoader worker" in str(err.value)  # wrapped with the worker's traceback
    line = one_line(err.value)
    assert re.fullmatch(rf"cannot read image {re.escape(str(bad))}: .+ "
                        r"\(expected a readable JPEG/PNG\)", line), line


def test_truncated_jpeg_is_reported(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 32, 3), 120, np.uint8)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected = rf"cannot read image {re.escape(str(path))}: .*[Tt]runcated"
    with pytest.raises(ReidError, match=expected):
        read_image(str(path))
