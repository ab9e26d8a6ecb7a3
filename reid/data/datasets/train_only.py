"""Training-only datasets: releases FastReID reads as extra training data, with no query or
gallery split (AirportALERT, CAVIAR, CUHK-SYSU, GRID, iLIDS, LPW, 3DPeS, PKU, PRAI, PRID,
SAIVT, SenseReID, Shinpuhkan, SYSU-MM01, Thermalworld, VIPeR, WildTrack).

Each release names its people and cameras its own way (folder names, fields of the file
name, a list file). A subclass only says where the release lives (``dataset_dir`` under the
root, ``layout`` for error messages) and yields ``(image path, person label, camera label)``
from :meth:`scan`; this module numbers the labels. Person labels are numbered in their
natural order (``"2"`` before ``"10"``) to 0..P-1 and camera labels likewise to 0..C-1, as
FastReID's training sets relabel their ``"<set>_<pid>"`` strings. ``pid_names`` and
``camera_names`` keep the release's labels (``pid_names[pid]``).

Such a set is named in DATASETS.NAMES (with others, each keeps its own identities); naming it
in DATASETS.TESTS is an error, as there is nothing to evaluate.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from reid.data.datasets.bases import ImageDataset, Record
from reid.errors import ReidError

RawRecord = tuple[Path, str, str]  # (image path, person label, camera label)


def natural_key(label: str) -> tuple:
    """Sort key putting ``"2"`` before ``"10"`` and ``"scen1-3"`` before ``"scen1-12"``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label))


def number_labels(raw: Iterable[RawRecord]) -> tuple[list[Record], list[str], list[str]]:
    """Records with person and camera labels replaced by their rank in natural order, sorted
    by path; plus the person labels and camera labels in that order."""
    raw = sorted(raw, key=lambda r: str(r[0]))
    pid_names = sorted({r[1] for r in raw}, key=natural_key)
    camera_names = sorted({r[2] for r in raw}, key=natural_key)
    pid_of = {name: n for n, name in enumerate(pid_names)}
    camera_of = {name: n for n, name in enumerate(camera_names)}
    records = [(str(path), pid_of[pid], camera_of[cam]) for path, pid, cam in raw]
    return records, pid_names, camera_names


def images(folder: Path, extensions: tuple[str, ...], recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (and its subfolders with ``recursive``), sorted."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in extensions)


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def name_field(path: Path, index: int, expected: str, sep: str = "_") -> str:
    """Field ``index`` of the file name (without extension) split on ``sep``."""
    fields = path.stem.split(sep)
    if len(fields) <= index or not fields[index]:
        raise ReidError(f"cannot parse image name {path} (expected {expected})")
    return fields[index]


class TrainOnlyDataset(ImageDataset):
    """Train records of the release under ``root / dataset_dir``; no query, no gallery."""

    dataset_dir = ""
    layout = ""           # what the release holds under dataset_dir, for error messages
    train_only = True

    def __init__(self, root: str | Path = "data") -> None:
        base = Path(root) / self.dataset_dir
        if not base.is_dir():
            raise ReidError(f"dataset {self.name} not found under {root}: expected "
                            f"{base}/{self.layout}")
        train, self.pid_names, self.camera_names = number_labels(self.scan(base))
        if not train:
            raise ReidError(f"no images in {base} (expected {base}/{self.layout})")
        super().__init__(train, [], [])

    def scan(self, base: Path) -> Iterator[RawRecord]:
        raise NotImplementedError

    def require(self, folder: Path) -> Path:
        """``folder`` if it exists, else the error naming the expected layout."""
        if not folder.is_dir():
            raise ReidError(f"missing folder {folder}: dataset {self.name} expects "
                            f"{self.dataset_dir}/{self.layout} under the datasets root")
        return folder
