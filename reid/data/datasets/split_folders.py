"""Datasets stored as three folders of images whose names carry the person id and camera.

DukeMTMC-reID, CUHK03-NP and VeRi-776 share Market-1501's idea (one folder per split, ids in
the file names) with other folder names, name formats and extensions. A subclass states them
as class attributes; this module finds the dataset under the root, checks the layout and
parses the names. Camera ids become 0-based; person id -1 marks junk detections (dropped).
"""
from __future__ import annotations

import re
from pathlib import Path

from reid.data.datasets.bases import ImageDataset, Record
from reid.errors import ReidError

SPLIT_NAMES = ("train", "query", "gallery")
JUNK_PID = -1


class SplitFoldersDataset(ImageDataset):
    """Train / query / gallery folders under the first of ``dataset_dirs`` found in the root.

    ``name_pattern`` must match a file name with the person id as group 1 and the 1-based
    camera as group 2; ``file_pattern`` shows the format in error messages.
    """

    dataset_dirs: tuple[str, ...] = ()
    split_dirs: dict[str, str] = {"train": "bounding_box_train", "query": "query",
                                  "gallery": "bounding_box_test"}
    name_pattern: re.Pattern = re.compile(r"^(-1|\d+)_c(\d+)\D")
    file_pattern = "PPPP_cC_....jpg"
    extensions: tuple[str, ...] = (".jpg",)
    eval_protocol = "market"

    def __init__(self, root: str | Path = "data") -> None:
        base = self.find_base(Path(root))
        self.check_split_folders(base)
        train, query, gallery = (self.read_split(base / self.split_dirs[split])
                                 for split in SPLIT_NAMES)
        super().__init__(train, query, gallery)

    # ------------------------------------------------------------------ layout
    @classmethod
    def layout(cls) -> str:
        folders = ",".join(cls.split_dirs[split] for split in SPLIT_NAMES)
        return "{" + folders + "}/" + cls.file_pattern

    @classmethod
    def find_base(cls, root: Path) -> Path:
        for candidate in cls.dataset_dirs:
            if (root / candidate).is_dir():
                return root / candidate
        accepted = [str(root / d) for d in cls.dataset_dirs[1:]]
        also = f" (also accepted: {', '.join(accepted)})" if accepted else ""
        raise ReidError(f"dataset {cls.__name__} not found under {root}: expected "
                        f"{root / cls.dataset_dirs[0]}/{cls.layout()}{also}")

    @classmethod
    def check_split_folders(cls, base: Path) -> None:
        """Report every missing split folder at once, before reading any file."""
        missing = [str(base / cls.split_dirs[s]) for s in SPLIT_NAMES
                   if not (base / cls.split_dirs[s]).is_dir()]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise ReidError(f"missing dataset folder{plural} {', '.join(missing)} (expected a "
                            f"folder of {cls.file_pattern} images each)")

    # ------------------------------------------------------------------ files
    @classmethod
    def parse_name(cls, path: str | Path) -> tuple[int, int]:
        """``(pid, camid)`` of an image file name, camid 0-based."""
        match = cls.name_pattern.match(Path(path).name)
        if match is None or int(match.group(2)) < 1:
            raise ReidError(f"cannot parse image name {path} (expected {cls.file_pattern}: "
                            "person id, camera >= 1)")
        return int(match.group(1)), int(match.group(2)) - 1

    @classmethod
    def read_split(cls, folder: Path) -> list[Record]:
        """The records of one split folder, sorted by file name, without junk (pid -1)."""
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in cls.extensions)
        if not files:
            raise ReidError(f"no images in {folder} (expected {cls.file_pattern} files)")
        records = []
        for path in files:
            pid, camid = cls.parse_name(path)
            if pid != JUNK_PID:
                records.append((str(path), pid, camid))
        return records
