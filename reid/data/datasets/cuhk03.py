"""CUHK03 (Li et al., CVPR 2014) in the new protocol split of Zhong et al. (CVPR 2017).

Read from Market-style folders (``bounding_box_train``, ``query``, ``bounding_box_test``) of
``PPPP_cC_....png`` (or ``.jpg``) files: either a ``cuhk03`` folder or the CUHK03-NP release
(``cuhk03-np/detected``, ``cuhk03-np/labeled``). Camera is the view of the camera pair (1, 2).

Evaluation uses the CUHK03 protocol (single-gallery-shot CMC, see
``reid.evaluation.protocols``) unless TEST.PROTOCOL names another.
"""
from __future__ import annotations

from reid.data.datasets.bases import DATASET_REGISTRY
from reid.data.datasets.split_folders import SplitFoldersDataset


@DATASET_REGISTRY.register()
class CUHK03(SplitFoldersDataset):
    """Detected boxes (the usual CUHK03-NP benchmark)."""

    dataset_dirs = ("cuhk03", "cuhk03-np/detected")
    file_pattern = "PPPP_cC_....png"
    extensions = (".png", ".jpg")
    eval_protocol = "cuhk03"


@DATASET_REGISTRY.register()
class CUHK03Labeled(CUHK03):
    """Hand-labelled boxes of CUHK03-NP."""

    dataset_dirs = ("cuhk03-np/labeled",)
