"""CUHK03 (Li et al., CVPR 2014) in the new protocol split of Zhong et al. (CVPR 2017).

Read from Market-style folders (``bounding_box_train``, ``query``, ``bounding_box_test``) of
``PPPP_cC_....png`` (or ``.jpg``) files: the CUHK03-NP release (``cuhk03-np/detected``,
``cuhk03-np/labeled``) or a ``cuhk03`` folder. Camera is the view of the camera pair (1, 2).
The original release (``cuhk03/cuhk03_release/cuhk-03.mat`` with
``cuhk03/cuhk03_new_protocol_config_{detected,labeled}.mat``, as FastReID and torchreid
expect it) is converted to ``cuhk03-np/{detected,labeled}`` the first time it is read
(:mod:`reid.data.datasets.cuhk03_release`).

Evaluation uses the CUHK03 protocol (single-gallery-shot CMC, see
``reid.evaluation.protocols``) unless TEST.PROTOCOL names another.
"""
from __future__ import annotations

from pathlib import Path

from reid.data.datasets.bases import DATASET_REGISTRY
from reid.data.datasets.cuhk03_release import RELEASE_MAT, convert_release
from reid.data.datasets.split_folders import SplitFoldersDataset

RELEASE_DIR = "cuhk03"


@DATASET_REGISTRY.register()
class CUHK03(SplitFoldersDataset):
    """Detected boxes (the usual CUHK03-NP benchmark)."""

    boxes = "detected"
    dataset_dirs = ("cuhk03-np/detected", "cuhk03")
    file_pattern = "PPPP_cC_....png"
    extensions = (".png", ".jpg")
    eval_protocol = "cuhk03"

    @classmethod
    def find_base(cls, root: Path) -> Path:
        converted = root / "cuhk03-np" / cls.boxes
        release = root / RELEASE_DIR
        if not converted.is_dir() and (release / RELEASE_MAT).is_file():
            convert_release(release, converted, cls.boxes)
        return super().find_base(root)


@DATASET_REGISTRY.register()
class CUHK03Labeled(CUHK03):
    """Hand-labelled boxes of CUHK03-NP."""

    boxes = "labeled"
    dataset_dirs = ("cuhk03-np/labeled",)
