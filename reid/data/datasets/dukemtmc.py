"""DukeMTMC-reID (Ristani et al., ECCVW 2016; Zheng et al., ICCV 2017).

Market-1501's layout (``bounding_box_train``, ``query``, ``bounding_box_test``) with files
named ``PPPP_cC_fFFFFFFF.jpg``: person id, camera 1..8, frame. It has no junk or distractor
identities: every gallery identity is a real person (some only appear in the gallery).
"""
from __future__ import annotations

import re

from reid.data.datasets.bases import DATASET_REGISTRY
from reid.data.datasets.split_folders import SplitFoldersDataset


@DATASET_REGISTRY.register()
class DukeMTMC(SplitFoldersDataset):
    dataset_dirs = ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc")
    name_pattern = re.compile(r"^(-1|\d+)_c(\d+)_f\d+\.jpg$")
    file_pattern = "PPPP_cC_fFFFFFFF.jpg"
