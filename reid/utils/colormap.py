"""Distinct, stable colours for identities and tracks (FastReID's ``fastreid.utils.colormap``).

Colour ``i`` has the hue ``i`` times the golden ratio around the colour wheel: consecutive
ids (1, 2, 3 ...) get far-apart hues, and an id gets the same colour in every frame, every
run and every process, with no table to keep in sync. Saturation and brightness cycle over a
few levels so that ids whose hues come close differ otherwise.

``colormap(rgb=False, maximum=255)`` is the N x 3 palette as FastReID returns it (BGR unless
``rgb``, in 0..maximum); ``random_color`` one of its colours; ``id_color(i)`` the RGB colour
of identity ``i`` as 0..255 integers, for PIL.
"""
from __future__ import annotations

import colorsys
import random

import numpy as np

GOLDEN_RATIO = (5 ** 0.5 - 1) / 2   # 0.618...: the most irrational step around the wheel
SATURATIONS = (0.85, 0.65, 1.0)
VALUES = (0.95, 0.8)
PALETTE_SIZE = 80


def id_color(identity: int) -> tuple[int, int, int]:
    """The RGB colour (0..255) of ``identity`` (any integer, negative included)."""
    hue = (identity * GOLDEN_RATIO) % 1.0
    saturation = SATURATIONS[identity % len(SATURATIONS)]
    value = VALUES[(identity // len(SATURATIONS)) % len(VALUES)]
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def colormap(rgb: bool = False, maximum: int = 255, size: int = PALETTE_SIZE) -> np.ndarray:
    """``size`` x 3 float32 palette (the colours of ids 0..size-1) in 0..``maximum``, BGR
    unless ``rgb``, as FastReID's colormap."""
    palette = np.array([id_color(i) for i in range(size)], dtype=np.float32) * maximum / 255
    return palette if rgb else palette[:, ::-1].copy()


def random_color(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """One colour of the palette, picked at random (Python's ``random``)."""
    return colormap(rgb=rgb, maximum=maximum)[random.randrange(PALETTE_SIZE)]


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (its luma)."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)
