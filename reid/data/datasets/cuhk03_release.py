"""The original CUHK03 release (``cuhk-03.mat``) turned into CUHK03-NP folders, once.

The release is one MATLAB v7.3 (HDF5) file: for each kind of box (``detected``,
``labeled``) a cell array of 5 camera pairs, each a cell array of people x 10 images (5 per
camera view, empty cells where a view has fewer). The new-protocol split of Zhong et al.
(CVPR 2017; 767 training identities, 700 test) comes as
``cuhk03_new_protocol_config_{detected,labeled}.mat`` (MATLAB v5): ``filelist`` names every
image ``<pair>_<person:03>_<view>_<image:02>.png``, ``labels`` its identity, and
``train_idx`` / ``query_idx`` / ``gallery_idx`` are 1-based indices into both.

``convert_release`` writes the images of one kind of box into ``bounding_box_train``,
``query`` and ``bounding_box_test`` named ``<identity:04>_c<view>_<file name>`` (the
CUHK03-NP layout that ``reid.data.datasets.cuhk03`` reads), building the folder beside the
target and renaming it into place, so an interrupted conversion leaves nothing half-made.
Needs h5py and scipy (``pip install 'reid-toolbox[cuhk03]'``).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from reid.errors import ReidError

logger = logging.getLogger(__name__)

RELEASE_MAT = Path("cuhk03_release") / "cuhk-03.mat"
SPLIT_MAT = "cuhk03_new_protocol_config_{boxes}.mat"
BOX_KINDS = ("detected", "labeled")
SPLIT_FOLDERS = {"train_idx": "bounding_box_train", "query_idx": "query",
                 "gallery_idx": "bounding_box_test"}
IMAGES_PER_PERSON = 10  # 5 per camera view


def release_file_name(pair: int, person: int, image: int) -> str:
    """The split files' name of image ``image`` (1-based) of ``person`` in camera ``pair``."""
    view = 1 if image <= IMAGES_PER_PERSON // 2 else 2
    return f"{pair}_{person:03d}_{view}_{image:02d}.png"


def read_split(path: Path) -> dict[str, tuple[str, int]]:
    """``{release file name: (split folder, identity)}`` from a new-protocol config file."""
    from scipy.io import loadmat

    try:
        config = loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as exc:
        raise ReidError(f"cannot read the CUHK03 split file {path}: {exc}") from exc
    missing = [k for k in ("filelist", "labels", *SPLIT_FOLDERS) if k not in config]
    if missing:
        raise ReidError(f"CUHK03 split file {path} lacks {', '.join(missing)} (expected the "
                        f"new-protocol config of Zhong et al.: filelist, labels, "
                        f"{', '.join(SPLIT_FOLDERS)})")
    names = [str(np.asarray(item).ravel()[0]) for item in config["filelist"].ravel()]
    labels = config["labels"].ravel().astype(int)
    if len(labels) != len(names):
        raise ReidError(f"CUHK03 split file {path}: {len(names)} file names but "
                        f"{len(labels)} labels")
    split: dict[str, tuple[str, int]] = {}
    for key, folder in SPLIT_FOLDERS.items():
        for index in config[key].ravel().astype(int):
            if not 1 <= index <= len(names):
                raise ReidError(f"CUHK03 split file {path}: {key} holds {index}, outside "
                                f"1..{len(names)}")
            split[names[index - 1]] = (folder, int(labels[index - 1]))
    return split


def release_images(path: Path, boxes: str) -> Iterator[tuple[str, np.ndarray]]:
    """``(release file name, H x W x 3 uint8 image)`` of every non-empty cell of ``boxes``."""
    try:
        import h5py
    except ImportError as exc:
        raise ReidError(f"reading the CUHK03 release {path} needs h5py and scipy: pip install "
                        "'reid-toolbox[cuhk03]' (or bring the CUHK03-NP folders instead)"
                        ) from exc
    try:
        mat = h5py.File(path, "r")
    except OSError as exc:
        raise ReidError(f"cannot read the CUHK03 release {path} (expected MATLAB v7.3 / "
                        f"HDF5): {exc}") from exc
    with mat:
        if boxes not in mat:
            kinds = sorted(k for k in mat.keys() if not k.startswith("#"))  # "#refs#": cells
            raise ReidError(f"CUHK03 release {path} has no '{boxes}' images (has: "
                            f"{', '.join(kinds)})")
        # MATLAB stores arrays column-major: h5py sees them transposed, hence the .T's.
        for pair, pair_ref in enumerate(mat[boxes][()].ravel(), start=1):
            people = mat[pair_ref][()].T  # people x 10 references
            for person, images in enumerate(people, start=1):
                for image, ref in enumerate(images, start=1):
                    pixels = mat[ref][()].T
                    if pixels.ndim == 3:  # an empty cell is a 1-d placeholder
                        yield release_file_name(pair, person, image), pixels


def convert_release(source: Path, target: Path, boxes: str = "detected") -> Path:
    """Write the CUHK03-NP folders of ``boxes`` from the release under ``source`` to
    ``target`` (see the module docstring); returns ``target``."""
    if boxes not in BOX_KINDS:
        raise ReidError(f"CUHK03 boxes must be one of {', '.join(BOX_KINDS)}, got {boxes!r}")
    split_path = source / SPLIT_MAT.format(boxes=boxes)
    if not split_path.is_file():
        raise ReidError(f"found the CUHK03 release {source / RELEASE_MAT} but not its split "
                        f"{split_path} (the new-protocol config of Zhong et al., CVPR 2017)")
    split = read_split(split_path)
    logger.info("converting the CUHK03 release (%s boxes) to CUHK03-NP folders in %s", boxes,
                target)
    # One staging folder per process: DDP ranks reading the dataset may all convert it.
    staging = target.with_name(f".{target.name}.converting-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        written = _write_split_folders(source / RELEASE_MAT, boxes, split, staging)
        absent = sorted(set(split) - written)
        if absent:
            raise ReidError(f"CUHK03 split {split_path} names {len(absent)} images that the "
                            f"release {source / RELEASE_MAT} does not hold (first: "
                            f"{absent[0]})")
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # else another process converted it first: keep that one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d CUHK03 images to %s", len(written), target)
    return target


def _write_split_folders(release: Path, boxes: str, split: dict[str, tuple[str, int]],
                         staging: Path) -> set[str]:
    """Save the release's images named in ``split`` into its folders under ``staging``;
    returns the names written."""
    for folder in SPLIT_FOLDERS.values():
        (staging / folder).mkdir(parents=True)
    written = set()
    for name, pixels in release_images(release, boxes):
        if name in split:
            folder, identity = split[name]
            view = name.split("_")[2]
            Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(
                staging / folder / f"{identity:04d}_c{view}_{name}")
            written.add(name)
    return written
