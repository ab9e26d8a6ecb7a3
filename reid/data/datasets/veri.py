"""VeRi-776 (Liu et al., ECCV 2016): vehicles seen by 20 cameras.

Folders ``image_train``, ``image_query`` and ``image_test`` of files named
``VVVV_cCCC_FFFFFFFF_N.jpg``: vehicle id, camera 1..20, frame, index.
"""
from __future__ import annotations

import re

from reid.data.datasets.bases import DATASET_REGISTRY
from reid.data.datasets.split_folders import SplitFoldersDataset


@DATASET_REGISTRY.register()
class VeRi(SplitFoldersDataset):
    dataset_dirs = ("veri", "VeRi")
    split_dirs = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
    name_pattern = re.compile(r"^(-1|\d+)_c(\d+)_\d+_\d+\.jpg$")
    file_pattern = "VVVV_cCCC_FFFFFFFF_N.jpg"
