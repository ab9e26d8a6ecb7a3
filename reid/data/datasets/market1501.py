"""Market-1501 (Zheng et al., ICCV 2015) and the synthetic set written in its layout.

A Market-1501 directory holds ``bounding_box_train``, ``query`` and ``bounding_box_test``
with files named ``PPPP_cCsS_FFFFFF_NN.jpg``: person id, camera, sequence, frame, box.
Person id -1 marks junk detections (dropped here) and 0 marks distractors (kept in the
gallery, where they can only be false matches). Camera ids become 0-based.

Market-1501+500k: the 500,000 distractor images of Zheng et al. sit in a folder beside the
three splits (``images_distractor/``, or ``images/`` as FastReID names it) and join the
gallery when the dataset is named ``Market1501_500k`` (FastReID turns the same on with its
``market1501_500k`` argument). ``reid.data.synthetic.distractors`` writes such a folder for
the synthetic set (``SyntheticMarket1501_500k`` reads it).
"""
from __future__ import annotations

import re
from pathlib import Path

from reid.data.datasets.bases import DATASET_REGISTRY, ImageDataset, Record
from reid.data.synthetic import DATASET_DIR as SYNTHETIC_DIR
from reid.data.synthetic import MARKET_DIR
from reid.errors import ReidError

SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
FILE_PATTERN = "PPPP_cCsS_FFFFFF_NN.jpg"
_NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
JUNK_PID = -1
DISTRACTOR_PID = 0
DISTRACTOR_DIRS = ("images_distractor", "images")  # this project's name, FastReID's
# Distractor file names carry a pid and a camera like Market's, the rest may differ.
_DISTRACTOR_NAME = re.compile(r"^(-1|\d+)_c(\d+)")


def parse_market_name(path: str | Path) -> tuple[int, int]:
    """``(pid, camid)`` of a Market file name, camid 0-based."""
    match = _NAME.match(Path(path).name)
    if match is None or int(match.group(2)) < 1:
        raise ReidError(f"cannot parse image name {path} (expected {FILE_PATTERN}: "
                        "person id, camera >= 1, sequence, frame, box)")
    return int(match.group(1)), int(match.group(2)) - 1


def check_split_folders(base: Path) -> None:
    """Check the layout before reading any file, so a missing folder is reported first."""
    missing = [str(base / name) for name in SPLITS.values() if not (base / name).is_dir()]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise ReidError(f"missing dataset folder{plural} {', '.join(missing)} (expected a folder "
                        f"of {FILE_PATTERN} images each)")


def read_market_split(folder: Path) -> list[Record]:
    """The records of one split folder, sorted by file name, without junk (pid -1)."""
    if not folder.is_dir():
        raise ReidError(f"missing dataset folder {folder} (expected a folder of {FILE_PATTERN} "
                        "images)")
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise ReidError(f"no images in {folder} (expected {FILE_PATTERN} files)")
    records = []
    for path in files:
        pid, camid = parse_market_name(path)
        if pid != JUNK_PID:
            records.append((str(path), pid, camid))
    return records


def read_distractors(base: Path) -> list[Record]:
    """The distractor folder's images beside the splits, as gallery records (junk dropped)."""
    folder = next((base / name for name in DISTRACTOR_DIRS if (base / name).is_dir()), None)
    if folder is None:
        raise ReidError(f"no distractor folder in {base}: expected {base / DISTRACTOR_DIRS[0]} "
                        f"(or FastReID's {base / DISTRACTOR_DIRS[1]}) with the 500k distractor "
                        f"images, or name the dataset without _500k")
    records = []
    for path in sorted(folder.glob("*.jpg")):
        match = _DISTRACTOR_NAME.match(path.name)
        if match is None or int(match.group(2)) < 1:
            raise ReidError(f"cannot parse distractor image name {path} (expected a Market "
                            "name starting PPPP_cC: person id, camera >= 1)")
        if int(match.group(1)) != JUNK_PID:
            records.append((str(path), int(match.group(1)), int(match.group(2)) - 1))
    if not records:
        raise ReidError(f"no distractor images in {folder} (expected PPPP_cC....jpg files)")
    return records


class MarketLayoutDataset(ImageDataset):
    """A dataset stored in Market-1501's layout under one of ``dataset_dirs`` (relative to root)."""

    dataset_dirs: tuple[str, ...] = ()
    missing_hint = ""
    junk_pids = (DISTRACTOR_PID,)
    with_distractors = False  # add the distractor folder's images to the gallery

    def __init__(self, root: str | Path = "data") -> None:
        base = self.find_base(Path(root))
        check_split_folders(base)
        train, query, gallery = (read_market_split(base / SPLITS[s])
                                 for s in ("train", "query", "gallery"))
        if self.with_distractors:
            gallery = gallery + read_distractors(base)
        super().__init__(train, query, gallery)

    @classmethod
    def find_base(cls, root: Path) -> Path:
        for candidate in cls.dataset_dirs:
            if (root / candidate).is_dir():
                return root / candidate
        layout = "{" + ",".join(SPLITS.values()) + "}/*.jpg"
        accepted = [str(root / d) for d in cls.dataset_dirs[1:]]
        also = f" (also accepted: {', '.join(accepted)})" if accepted else ""
        raise ReidError(f"dataset {cls.__name__} not found under {root}: expected "
                        f"{root / cls.dataset_dirs[0]}/{layout}{also}{cls.missing_hint}")


@DATASET_REGISTRY.register()
class Market1501(MarketLayoutDataset):
    dataset_dirs = (MARKET_DIR, f"market1501/{MARKET_DIR}", "market1501")


@DATASET_REGISTRY.register()
class SyntheticMarket1501(MarketLayoutDataset):
    """The procedural set of ``reid.data.synthetic``; ``reid prepare`` generates it."""

    dataset_dirs = (f"{SYNTHETIC_DIR}/{MARKET_DIR}",)
    missing_hint = "; generate it with `reid prepare` (DATASETS.NAMES naming SyntheticMarket1501)"


@DATASET_REGISTRY.register()
class Market1501_500k(Market1501):  # noqa: N801 (the benchmark's name)
    """Market-1501 with the 500k distractors in its gallery (FastReID's market1501_500k)."""

    with_distractors = True


@DATASET_REGISTRY.register()
class SyntheticMarket1501_500k(SyntheticMarket1501):  # noqa: N801
    """The synthetic set with the distractors of ``reid.data.synthetic.distractors``."""

    with_distractors = True
    missing_hint = ("; generate it with `reid prepare`, then its distractors with "
                    "reid.data.synthetic.distractors.append_distractors")
