"""PKU VehicleID (Liu et al., CVPR 2016): vehicles photographed from the front or the back.

The release holds ``image/<imgid>.jpg`` and ``train_test_split/`` lists of ``<imgid> <vid>``
lines: ``train_list.txt`` and one test list per test size. A test set has no query/gallery
split: as in FastReID, one image per vehicle (picked at random, here with a fixed seed so every
run evaluates the same split) is its gallery and the other images are queries.

There are no camera ids; every image gets its own (its image id), so the Market protocol
never discards a gallery image as "same camera" and only the query itself is excluded.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from reid.data.datasets.bases import DATASET_REGISTRY, ImageDataset, Record
from reid.data.datasets.list_files import first_existing, read_pairs
from reid.errors import ReidError

SPLIT_DIR = "train_test_split"
LINE_FORMAT = "IMGID VID"


def read_list(image_dir: Path, list_path: Path) -> list[Record]:
    records = []
    for name, vid in read_pairs(list_path, LINE_FORMAT):
        if not name.isdigit():
            raise ReidError(f"image id {name!r} in {list_path} is not a number (expected "
                            f"lines '{LINE_FORMAT}')")
        records.append((str(image_dir / f"{name}.jpg"), vid, int(name)))
    return records


def split_query_gallery(records: list[Record], seed: int) -> tuple[list[Record], list[Record]]:
    """One random image per vehicle for the gallery (seeded), the others as queries.

    Both lists keep the order of ``records``.
    """
    by_vid: dict[int, list[int]] = defaultdict(list)
    for index, (_, vid, _) in enumerate(records):
        by_vid[vid].append(index)
    rng = np.random.default_rng(seed)
    chosen = {indices[int(rng.integers(len(indices)))]
              for _, indices in sorted(by_vid.items())}
    query = [r for i, r in enumerate(records) if i not in chosen]
    gallery = [r for i, r in enumerate(records) if i in chosen]
    return query, gallery


@DATASET_REGISTRY.register()
class VehicleID(ImageDataset):
    """Training list plus the full test list (13,164 vehicles) as query / gallery."""

    dataset_dirs = ("vehicleid", "VehicleID_V1.0")
    test_list = "test_list_13164.txt"
    gallery_seed = 0

    def __init__(self, root: str | Path = "data") -> None:
        base = self.find_base(Path(root))
        image_dir = base / "image"
        if not image_dir.is_dir():
            raise ReidError(f"missing VehicleID image folder {image_dir} (expected "
                            "image/<imgid>.jpg)")
        train = read_list(image_dir, base / SPLIT_DIR / "train_list.txt")
        test = read_list(image_dir, base / SPLIT_DIR / self.test_list)
        query, gallery = split_query_gallery(test, self.gallery_seed)
        super().__init__(train, query, gallery)

    @classmethod
    def find_base(cls, root: Path) -> Path:
        base = first_existing(root, cls.dataset_dirs)
        if base is None:
            raise ReidError(f"dataset {cls.__name__} not found under {root}: expected "
                            f"{root / cls.dataset_dirs[0]}/{{image/*.jpg,{SPLIT_DIR}/"
                            f"{{train_list.txt,{cls.test_list}}}}} (also accepted: "
                            f"{root / cls.dataset_dirs[1]})")
        return base


@DATASET_REGISTRY.register()
class SmallVehicleID(VehicleID):
    test_list = "test_list_800.txt"


@DATASET_REGISTRY.register()
class MediumVehicleID(VehicleID):
    test_list = "test_list_1600.txt"


@DATASET_REGISTRY.register()
class LargeVehicleID(VehicleID):
    test_list = "test_list_2400.txt"
