"""Training-only releases whose file names carry the person (and often the camera).

Folders and name fields as the releases ship them and as FastReID reads them; every class is
registered under FastReID's name (``CAVIARa``, ``cuhkSYSU``, ...) and, where FastReID's is
not the dataset's usual spelling, an alias.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from reid.data.datasets.bases import DATASET_REGISTRY
from reid.data.datasets.train_only import RawRecord, TrainOnlyDataset, images, name_field
from reid.errors import ReidError

ONE_CAMERA = "0"


@DATASET_REGISTRY.register(aliases=("CAVIAR", "CAVIAR4REID"))
class CAVIARa(TrainOnlyDataset):
    """CAVIAR4REID (Cheng et al., BMVC 2011): ``PPPPNNN.jpg``, person = first 4 digits."""

    dataset_dir = "CAVIARa"
    layout = "PPPPNNN.jpg"

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for path in images(base, (".jpg",)):
            if len(path.stem) < 5 or not path.stem[:4].isdigit():
                raise ReidError(f"cannot parse image name {path} (expected {self.layout})")
            yield path, path.stem[:4], ONE_CAMERA


@DATASET_REGISTRY.register(aliases=("CUHKSYSU",))
class cuhkSYSU(TrainOnlyDataset):  # noqa: N801 (FastReID's name, kept for its configs)
    """CUHK-SYSU person search (Xiao et al., CVPR 2017), its cropped people:
    ``cropped_images/p<pid>_s<scene>.jpg``; one camera label for all (moving cameras)."""

    dataset_dir = "cuhk_sysu"
    layout = "cropped_images/p<pid>_s<scene>....jpg"
    name_pattern = re.compile(r"p(-?\d+)_s\d")

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for path in images(self.require(base / "cropped_images"), (".jpg",)):
            match = self.name_pattern.search(path.name)
            if match is None:
                raise ReidError(f"cannot parse image name {path} (expected p<pid>_s<scene>.jpg)")
            yield path, match.group(1), ONE_CAMERA


@DATASET_REGISTRY.register()
class GRID(TrainOnlyDataset):
    """QMUL underGround Re-IDentification (Loy et al., 2010): ``images/PPPP_C_....jpeg``.

    Person 0000 marks the 775 gallery people seen by one camera only: they are not one
    person, so they are left out (FastReID trains them as one class).
    """

    dataset_dir = "underground_reid"
    layout = "images/PPPP_C_....jpeg"
    unpaired = "0000"

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for path in images(self.require(base / "images"), (".jpeg", ".jpg")):
            pid = name_field(path, 0, self.layout)
            if pid != self.unpaired:
                yield path, pid, name_field(path, 1, self.layout)


class PidCameraNames(TrainOnlyDataset):
    """Files named ``<pid>_<camera>_...`` in one folder (``image_dir`` under the release)."""

    image_dir = ""
    extensions: tuple[str, ...] = (".jpg",)
    camera_field = 1

    def scan(self, base: Path) -> Iterator[RawRecord]:
        folder = self.require(base / self.image_dir) if self.image_dir else base
        for path in images(folder, self.extensions):
            yield (path, name_field(path, 0, self.layout),
                   name_field(path, self.camera_field, self.layout))


@DATASET_REGISTRY.register()
class PKU(PidCameraNames):
    """PKU-Reid (Ma et al., 2016), 128x48 crops: ``PPPP_C_....png``."""

    dataset_dir = "PKUv1a_128x48"
    layout = "PPPP_C_....png"
    extensions = (".png",)


@DATASET_REGISTRY.register(aliases=("PRAI1581",))
class PRAI(PidCameraNames):
    """PRAI-1581 aerial person re-id (Zhang et al., 2019): ``images/PPPP_CC_....jpg``."""

    dataset_dir = "PRAI-1581"
    image_dir = "images"
    layout = "images/PPPP_CC_....jpg"


@DATASET_REGISTRY.register()
class Shinpuhkan(TrainOnlyDataset):
    """Shinpuhkan 2014 (Kawanishi et al.): ``<any folders>/PPP_..._CC_....jpg`` with the
    person in the first ``_`` field and the camera in the third."""

    dataset_dir = "shinpuhkan"
    layout = "**/PPP_X_CC_....jpg"

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for path in images(base, (".jpg",), recursive=True):
            yield path, name_field(path, 0, self.layout), name_field(path, 2, self.layout)


@DATASET_REGISTRY.register()
class SenseReID(TrainOnlyDataset):
    """SenseReID (Zhao et al., CVPR 2017): ``test_gallery/`` and ``test_prob/`` of
    ``PPPPPPP_C.jpg``; both are used for training, as in FastReID."""

    dataset_dir = "SenseReID"
    layout = "{test_gallery,test_prob}/PPPPPPP_C.jpg"

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for split in ("test_gallery", "test_prob"):
            for path in images(self.require(base / split), (".jpg",)):
                yield path, name_field(path, 0, self.layout), name_field(path, 1, self.layout)


@DATASET_REGISTRY.register()
class VIPeR(TrainOnlyDataset):
    """VIPeR (Gray et al., PETS 2007): ``cam_a/`` and ``cam_b/`` of ``PPP_AAA.bmp``."""

    dataset_dir = "VIPeR"
    layout = "{cam_a,cam_b}/PPP_AAA.bmp"

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for camera in ("cam_a", "cam_b"):
            for path in images(self.require(base / camera), (".bmp",)):
                yield path, name_field(path, 0, self.layout), camera


@DATASET_REGISTRY.register()
class AirportALERT(TrainOnlyDataset):
    """Airport ALERT (Gou et al., 2018): ``filepath.txt`` lists ``<camera>\\<pid>\\<file>``
    (Windows separators) relative to the release. As in FastReID only persons 11001 to
    401999 are used (the labelled range)."""

    dataset_dir = "AirportALERT"
    layout = "{filepath.txt,<camera>/<pid>/<file>}"
    pid_range = (11001, 401999)

    def scan(self, base: Path) -> Iterator[RawRecord]:
        listing = base / "filepath.txt"
        if not listing.is_file():
            raise ReidError(f"missing list file {listing} (expected lines "
                            r"'<camera>\<pid>\<file>')")
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            parts = [p for p in re.split(r"[\\/]", line.strip()) if p]
            if not parts:
                continue
            if len(parts) < 3 or not parts[1].isdigit():
                raise ReidError(f"cannot parse line {number} of {listing}: {line.strip()!r} "
                                r"(expected '<camera>\<pid>\<file>')")
            if self.pid_range[0] <= int(parts[1]) <= self.pid_range[1]:
                yield base.joinpath(*parts), parts[1], parts[0]
