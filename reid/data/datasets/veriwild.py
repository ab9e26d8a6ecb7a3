"""VERI-Wild (Lou et al., CVPR 2019): 416,314 images of 40,671 vehicles from 174 cameras.

The release holds ``images/<vid>/<imgid>.jpg`` and ``train_test_split/``:
``vehicle_info.txt`` (a header line, then ``<vid>/<imgid>;<camera>;<time>;<model>;<type>;
<color>`` per image), ``train_list.txt`` and, for each test size (3000, 5000, 10000
vehicles), ``test_<size>_query.txt`` and ``test_<size>.txt`` (the gallery), all of
``<vid>/<imgid>`` lines. ``VeRiWild`` evaluates the large test set, as FastReID does;
``SmallVeRiWild``, ``MediumVeRiWild`` and ``LargeVeRiWild`` name the sizes. Vehicle and
camera ids are the release's numbers.
"""
from __future__ import annotations

from pathlib import Path

from reid.data.datasets.bases import DATASET_REGISTRY, ImageDataset, Record
from reid.errors import ReidError

SPLIT_DIR = "train_test_split"
INFO_FORMAT = "<vid>/<imgid>;<camera>;<time>;<model>;<type>;<color>"
LIST_FORMAT = "<vid>/<imgid>"


def read_cameras(info: Path) -> dict[str, int]:
    """``{"<vid>/<imgid>": camera}`` from ``vehicle_info.txt`` (its first line is a header)."""
    if not info.is_file():
        raise ReidError(f"missing VERI-Wild file {info} (expected lines '{INFO_FORMAT}')")
    cameras = {}
    for number, line in enumerate(info.read_text().splitlines()[1:], start=2):
        fields = line.strip().split(";")
        if fields == [""]:
            continue
        if len(fields) < 2 or "/" not in fields[0] or not fields[1].strip().isdigit():
            raise ReidError(f"cannot parse line {number} of {info}: {line.strip()!r} "
                            f"(expected '{INFO_FORMAT}')")
        cameras[fields[0].strip()] = int(fields[1])
    return cameras


def read_list(path: Path, image_dir: Path, cameras: dict[str, int]) -> list[Record]:
    if not path.is_file():
        raise ReidError(f"missing VERI-Wild list {path} (expected lines '{LIST_FORMAT}')")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        key = line.strip()
        if not key:
            continue
        vid, _, imgid = key.partition("/")
        if not vid.isdigit() or not imgid:
            raise ReidError(f"cannot parse line {number} of {path}: {key!r} "
                            f"(expected '{LIST_FORMAT}')")
        if key not in cameras:
            raise ReidError(f"image {key} of {path} is not in {SPLIT_DIR}/vehicle_info.txt "
                            "(no camera for it)")
        records.append((str(image_dir / vid / f"{imgid}.jpg"), int(vid), cameras[key]))
    return records


@DATASET_REGISTRY.register()
class VeRiWild(ImageDataset):
    dataset_dir = "VERI-Wild"
    test_size = 10000

    def __init__(self, root: str | Path = "data") -> None:
        base = Path(root) / self.dataset_dir
        if not base.is_dir():
            raise ReidError(f"dataset {self.name} not found under {root}: expected {base}/"
                            f"{{images/<vid>/<imgid>.jpg,{SPLIT_DIR}/{{vehicle_info.txt,"
                            f"train_list.txt,test_{self.test_size}_query.txt,"
                            f"test_{self.test_size}.txt}}}}")
        image_dir = base / "images"
        if not image_dir.is_dir():
            raise ReidError(f"missing VERI-Wild image folder {image_dir} (expected "
                            "images/<vid>/<imgid>.jpg)")
        split = base / SPLIT_DIR
        cameras = read_cameras(split / "vehicle_info.txt")
        train, query, gallery = (
            read_list(split / name, image_dir, cameras)
            for name in ("train_list.txt", f"test_{self.test_size}_query.txt",
                         f"test_{self.test_size}.txt"))
        super().__init__(train, query, gallery)


@DATASET_REGISTRY.register()
class SmallVeRiWild(VeRiWild):
    test_size = 3000


@DATASET_REGISTRY.register()
class MediumVeRiWild(VeRiWild):
    test_size = 5000


@DATASET_REGISTRY.register()
class LargeVeRiWild(VeRiWild):
    test_size = 10000
