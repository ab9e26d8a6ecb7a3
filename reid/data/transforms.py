"""Image pipelines from the ``INPUT.*`` config, on torchvision.transforms.v2.

Input: a PIL RGB image. Output: a float32 ``3 x H x W`` tensor in 0..255 (not divided by
255): the model subtracts ``MODEL.PIXEL_MEAN`` and divides by ``MODEL.PIXEL_STD`` itself.
"""
from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from reid.config import CfgNode
from reid.errors import ReidError

PADDING_MODES = ("constant", "edge", "reflect", "symmetric")


def build_transforms(cfg: CfgNode, is_train: bool) -> v2.Compose:
    """The training pipeline (augmentations per INPUT.*) or the test one (resize, then a
    center crop to INPUT.CROP.SIZE when INPUT.CROP.ENABLED)."""
    if is_train:
        steps = train_steps(cfg.INPUT) + _to_float() + tensor_train_steps(cfg.INPUT)
    else:
        steps = [_resize(cfg.INPUT.SIZE_TEST)] + center_crop_steps(cfg.INPUT) + _to_float()
    return v2.Compose(steps + [v2.ToPureTensor()])


def _resize(size) -> v2.Resize:
    return v2.Resize(tuple(int(s) for s in size), interpolation=InterpolationMode.BICUBIC,
                     antialias=True)


def crop_size(crop: CfgNode) -> tuple[int, int]:
    """INPUT.CROP.SIZE as (height, width): one number is a square, as in FastReID."""
    size = [int(s) for s in crop.SIZE]
    if len(size) not in (1, 2) or min(size, default=0) < 1:
        raise ReidError(f"INPUT.CROP.SIZE must be [size] or [height, width] in pixels; "
                        f"got {list(crop.SIZE)}")
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _range(crop: CfgNode, key: str) -> tuple[float, float]:
    low_high = [float(v) for v in crop[key]]
    if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
        raise ReidError(f"INPUT.CROP.{key} must be [low, high] with 0 < low <= high; "
                        f"got {list(crop[key])}")
    return low_high[0], low_high[1]


def random_resized_crop(crop: CfgNode) -> v2.RandomResizedCrop:
    """A random region (area share in CROP.SCALE, aspect ratio in CROP.RATIO) resized to
    CROP.SIZE, after the resize to SIZE_TRAIN (FastReID 1.4's order)."""
    return v2.RandomResizedCrop(crop_size(crop), scale=_range(crop, "SCALE"),
                                ratio=_range(crop, "RATIO"),
                                interpolation=InterpolationMode.BICUBIC, antialias=True)


def center_crop_steps(inp: CfgNode) -> list:
    """With INPUT.CROP.ENABLED, test images are center-cropped to CROP.SIZE (as in training)."""
    return [v2.CenterCrop(crop_size(inp.CROP))] if inp.CROP.ENABLED else []


def _to_float() -> list:
    # uint8 image -> float32 with the same 0..255 values (scale=False keeps them unscaled)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=False)]


def train_steps(inp: CfgNode) -> list:
    """Augmentations applied to the PIL image, in FastReID's order."""
    size = tuple(int(s) for s in inp.SIZE_TRAIN)
    # the size after the geometric steps: padding + random crop keep it
    out_size = crop_size(inp.CROP) if inp.CROP.ENABLED else size
    steps = []
    if inp.DO_AUTOAUG:
        steps.append(v2.RandomApply([v2.AutoAugment()], p=inp.AUTOAUG_PROB))
    steps.append(_resize(size))
    if inp.CROP.ENABLED:
        steps.append(random_resized_crop(inp.CROP))
    if inp.DO_FLIP:
        steps.append(v2.RandomHorizontalFlip(p=inp.FLIP_PROB))
    if inp.DO_PAD:
        if inp.PADDING_MODE not in PADDING_MODES:
            raise ReidError(f"INPUT.PADDING_MODE must be one of {', '.join(PADDING_MODES)}; "
                            f"got {inp.PADDING_MODE!r}")
        steps += [v2.Pad(inp.PADDING, padding_mode=inp.PADDING_MODE), v2.RandomCrop(out_size)]
    if inp.CJ.ENABLED:
        jitter = v2.ColorJitter(brightness=inp.CJ.BRIGHTNESS, contrast=inp.CJ.CONTRAST,
                                saturation=inp.CJ.SATURATION, hue=inp.CJ.HUE)
        steps.append(v2.RandomApply([jitter], p=inp.CJ.PROB))
    if inp.DO_AFFINE:
        # FastReID 1.4's fixed ranges: +-10 degrees, 0.9..1.1 scale, +-0.1 degree shear, no
        # translation, black fill.
        steps.append(v2.RandomAffine(degrees=10, scale=(0.9, 1.1), shear=0.1, fill=0))
    if inp.DO_AUGMIX:
        steps.append(v2.RandomApply([v2.AugMix()], p=inp.AUGMIX_PROB))
    return steps


def tensor_train_steps(inp: CfgNode) -> list:
    """Augmentations applied to the float 0..255 tensor."""
    steps = []
    if inp.REA.ENABLED:
        value = [float(v) for v in inp.REA.VALUE]  # per channel, in 0..255 like the image
        steps.append(v2.RandomErasing(p=inp.REA.PROB, value=value))
    if inp.RPT.ENABLED:
        steps.append(RandomPatch(p=inp.RPT.PROB))
    return steps


class RandomPatch(nn.Module):
    """Paste a patch cut from an earlier image (occlusion by real image content).

    Every image gives one random patch to a pool; once the pool holds ``min_pool`` patches,
    an image gets, with probability ``p``, a patch from the pool (mirrored half the time) at a
    random place. Each DataLoader worker keeps its own pool; randomness comes from torch's
    generator, which the loader seeds per worker.
    """

    def __init__(self, p: float = 0.5, pool_size: int = 5000, min_pool: int = 16,
                 area: tuple[float, float] = (0.01, 0.5), ratio: tuple[float, float] = (0.1, 10.0)
                 ) -> None:
        super().__init__()
        self.p, self.min_pool, self.area, self.ratio = p, min_pool, area, ratio
        self.pool: deque[torch.Tensor] = deque(maxlen=pool_size)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    def _cut(self, img: torch.Tensor) -> torch.Tensor | None:
        _, h, w = img.shape
        area = self._uniform(*self.area) * h * w
        aspect = math.exp(self._uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        ph, pw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < ph < h and 0 < pw < w):
            return None
        y = int(torch.randint(0, h - ph + 1, ()))
        x = int(torch.randint(0, w - pw + 1, ()))
        return img[:, y:y + ph, x:x + pw].clone()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        patch = self._cut(img)
        pasted = img
        if len(self.pool) >= self.min_pool and float(torch.rand(())) < self.p:
            pasted = self._paste(img, self.pool[int(torch.randint(0, len(self.pool), ()))])
        if patch is not None:
            self.pool.append(patch)
        return pasted

    def _paste(self, img: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        _, ph, pw = patch.shape
        if ph > h or pw > w:
            return img
        if float(torch.rand(())) < 0.5:
            patch = patch.flip(-1)
        y = int(torch.randint(0, h - ph + 1, ()))
        x = int(torch.randint(0, w - pw + 1, ()))
        out = img.clone()
        out[:, y:y + ph, x:x + pw] = patch
        return out
