"""Training-only releases with one folder per person (the camera in the file name, in a
parent folder, or a single camera).

Folders and name fields as the releases ship them and as FastReID reads them; every class is
registered under FastReID's name and, where that is not the dataset's usual spelling, an alias.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from reid.data.datasets.bases import DATASET_REGISTRY
from reid.data.datasets.train_only import (RawRecord, TrainOnlyDataset, images, name_field,
                                           subfolders)
from reid.errors import ReidError

ONE_CAMERA = "0"


class PersonFolders(TrainOnlyDataset):
    """``<people_dir>/<pid>/*<ext>``; the camera from ``camera_of`` (default: one camera)."""

    people_dir = ""
    extensions: tuple[str, ...] = (".jpg",)

    def scan(self, base: Path) -> Iterator[RawRecord]:
        people = self.require(base / self.people_dir) if self.people_dir else base
        for person in subfolders(people):
            for path in images(person, self.extensions):
                yield path, person.name, self.camera_of(path)

    def camera_of(self, path: Path) -> str:
        return ONE_CAMERA


@DATASET_REGISTRY.register(aliases=("ILIDS",))
class iLIDS(PersonFolders):  # noqa: N801 (FastReID's name)
    """QMUL i-LIDS (Zheng et al., BMVC 2009): ``<pid>/<camera>_....png``."""

    dataset_dir = "iLIDS"
    layout = "<pid>/<camera>_....png"
    extensions = (".png",)

    def camera_of(self, path: Path) -> str:
        return name_field(path, 0, self.layout)


@DATASET_REGISTRY.register(aliases=("3DPeS",))
class PeS3D(PersonFolders):
    """3DPeS (Baltieri et al., 2011): ``<pid>/*.bmp``, cameras not given (one label)."""

    dataset_dir = "3DPeS"
    layout = "<pid>/*.bmp"
    extensions = (".bmp",)


@DATASET_REGISTRY.register()
class Thermalworld(PersonFolders):
    """ThermalWorld, its RGB half (Kniaz et al., ECCVW 2018): ``<pid>/*.jpg``, one camera."""

    dataset_dir = "thermalworld_rgb"
    layout = "<pid>/*.jpg"


@DATASET_REGISTRY.register(aliases=("WildTrack",))
class WildTrackCrop(PersonFolders):
    """People cropped from WILDTRACK (Chavdarova et al., CVPR 2018):
    ``crop/<pid>/<camera>_....png``."""

    dataset_dir = "Wildtrack_crop_dataset"
    people_dir = "crop"
    layout = "crop/<pid>/<camera>_....png"
    extensions = (".png",)

    def camera_of(self, path: Path) -> str:
        return name_field(path, 0, self.layout)


@DATASET_REGISTRY.register(aliases=("SAIVTSoftBio",))
class SAIVT(PersonFolders):
    """SAIVT-SoftBio (Bialkowski et al., DICTA 2012):
    ``cropped_images/<pid>/<a>-<b>-<camera>-....jpeg`` (camera = third ``-`` field)."""

    dataset_dir = "SAIVT-SoftBio"
    people_dir = "cropped_images"
    layout = "cropped_images/<pid>/X-X-<camera>-....jpeg"
    extensions = (".jpeg",)

    def camera_of(self, path: Path) -> str:
        return name_field(path, 2, self.layout, sep="-")


@DATASET_REGISTRY.register(aliases=("SYSUMM01", "SYSU-MM01"))
class SYSU_mm(TrainOnlyDataset):  # noqa: N801 (FastReID's name)
    """SYSU-MM01 (Wu et al., ICCV 2017), its visible-light cameras 1, 2, 4 and 5:
    ``cam<k>/<pid>/*.jpg`` (cameras 3 and 6 are infrared and left out, as in FastReID)."""

    dataset_dir = "SYSU-MM01"
    layout = "{cam1,cam2,cam4,cam5}/<pid>/*.jpg"
    cameras = ("cam1", "cam2", "cam4", "cam5")

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for camera in self.cameras:
            for person in subfolders(self.require(base / camera)):
                for path in images(person, (".jpg",)):
                    yield path, person.name, camera


@DATASET_REGISTRY.register()
class LPW(TrainOnlyDataset):
    """Labeled Pedestrian in the Wild (Song et al., AAAI 2018), 256x128 crops:
    ``scen{1,2,3}/<camera>/<pid>/*.jpg``. A person is numbered per scene (``scen1-5`` and
    ``scen2-5`` are different people); cameras keep their folder name, as in FastReID."""

    dataset_dir = "pep_256x128"
    layout = "scen{1,2,3}/<camera>/<pid>/*.jpg"
    scenes = ("scen1", "scen2", "scen3")

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for scene in self.scenes:
            for camera in subfolders(self.require(base / scene)):
                for person in subfolders(camera):
                    for path in images(person, (".jpg",)):
                        yield path, f"{scene}-{person.name}", camera.name


@DATASET_REGISTRY.register(aliases=("PRID2011",))
class PRID(TrainOnlyDataset):
    """PRID 2011 (Hirzer et al., SCIA 2011) as FastReID reads it:
    ``slim_train/**/<x>_<pid>/<camera>_....png`` (person = second ``_`` field of the folder,
    camera = first ``_`` field of the file)."""

    dataset_dir = "prid_2011"
    layout = "slim_train/**/<x>_<pid>/<camera>_....png"

    def scan(self, base: Path) -> Iterator[RawRecord]:
        for path in images(self.require(base / "slim_train"), (".png",), recursive=True):
            folder = path.parent.name.split("_")
            if len(folder) < 2 or not folder[1]:
                raise ReidError(f"cannot parse the person of {path} (expected {self.layout})")
            yield path, folder[1], name_field(path, 0, self.layout)
