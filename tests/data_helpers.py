"""Helpers shared by the data tests: configs changed by keyword, pictures, the resize reference."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def with_changes(cfg, changes: dict):
    """``cfg`` with each ``SECTION__KEY=value`` change applied (``__`` stands for the dot),
    frozen as the loaders receive it."""
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return cfg.freeze()


def picture(seed: int = 0, size: tuple[int, int] = (20, 44)) -> Image.Image:
    """A random RGB picture of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def bicubic_chw(img: Image.Image, height: int, width: int) -> torch.Tensor:
    """Independent reference of the resize: PIL bicubic, HWC -> CHW, float, unscaled 0..255."""
    arr = np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)
