"""MSMT17 (Wei et al., CVPR 2018): 4,101 people seen by 15 cameras.

The release (``MSMT17_V1``, or ``MSMT17_V2`` with blurred faces and other folder names) holds
a train and a test folder and four lists of ``<folder>/<file> <pid>`` lines: ``list_train``,
``list_val`` (more images of the training identities), ``list_query``, ``list_gallery``.
Files are named ``PPPP_SSS_CC_...jpg``: person id, sequence, camera 1..15.

Train and test pids both start at 0 in the lists although they are different people, so the
test pids are shifted past the training ones (as FastReID does): combining the splits for
training (DATASETS.COMBINEALL) must not merge strangers. ``list_val`` joins training only
then, for a fair comparison with published numbers.
"""
from __future__ import annotations

import re
from pathlib import Path

from reid.data.datasets.bases import DATASET_REGISTRY, ImageDataset, Record
from reid.data.datasets.list_files import first_existing, read_pairs
from reid.errors import ReidError

# release folder -> (train folder, test folder)
RELEASES = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LIST_FILES = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt",
              "gallery": "list_gallery.txt"}
LINE_FORMAT = "PPPP/PPPP_SSS_CC_....jpg PID"
_NAME = re.compile(r"^\d+_\d+_(\d+)_")


def camera_of(name: str, list_path: Path) -> int:
    """The 0-based camera of an MSMT17 file name (its third ``_`` field)."""
    match = _NAME.match(Path(name).name)
    if match is None or int(match.group(1)) < 1:
        raise ReidError(f"cannot parse image name {name} in {list_path} (expected "
                        "PPPP_SSS_CC_....jpg: person id, sequence, camera >= 1)")
    return int(match.group(1)) - 1


def read_list(image_dir: Path, list_path: Path, pid_offset: int = 0) -> list[Record]:
    return [(str(image_dir / name), pid + pid_offset, camera_of(name, list_path))
            for name, pid in read_pairs(list_path, LINE_FORMAT)]


def find_release(root: Path) -> tuple[Path, str, str]:
    """(release folder, train folder name, test folder name) of the first release found."""
    for release, (train_dir, test_dir) in RELEASES.items():
        base = first_existing(root, (release, f"msmt17/{release}"))
        if base is not None:
            return base, train_dir, test_dir
    contents = "{train,test," + ",".join(LIST_FILES.values()) + "}"
    raise ReidError(f"dataset MSMT17 not found under {root}: expected {root / 'MSMT17_V1'}/"
                    f"{contents} (also accepted: {root / 'MSMT17_V2'} with mask_train_v2, "
                    f"mask_test_v2; either under {root / 'msmt17'})")


@DATASET_REGISTRY.register()
class MSMT17(ImageDataset):
    def __init__(self, root: str | Path = "data") -> None:
        base, train_dir, test_dir = find_release(Path(root))
        missing = [str(base / d) for d in (train_dir, test_dir) if not (base / d).is_dir()]
        if missing:
            raise ReidError(f"missing MSMT17 image folder(s) {', '.join(missing)} (expected the "
                            f"folders that {', '.join(LIST_FILES.values())} refer to)")
        lists = {split: base / name for split, name in LIST_FILES.items()}
        train = read_list(base / train_dir, lists["train"])
        self.val = read_list(base / train_dir, lists["val"])
        offset = max(pid for _, pid, _ in train + self.val) + 1
        query = read_list(base / test_dir, lists["query"], offset)
        gallery = read_list(base / test_dir, lists["gallery"], offset)
        super().__init__(train, query, gallery)

    def combined_train(self) -> list[Record]:
        return super().combined_train() + self.val
