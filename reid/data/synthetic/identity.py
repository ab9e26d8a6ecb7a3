"""Per-identity attributes: what a person looks like wherever they are seen.

Identity lives in cues that survive a camera change: clothing colours and patterns, body shape,
hair, hat and bags.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reid.data.synthetic.difficulty import DIFFICULTIES, STANDARD, Difficulty
from reid.data.synthetic.seeds import IDENTITY_STREAM, rng_for

# Clothing colours: distinct hues and lightness levels that stay apart under a colour cast.
PALETTE = np.array([
    (22, 22, 24), (236, 236, 230), (128, 128, 130), (205, 32, 36), (118, 22, 34),
    (242, 132, 24), (236, 212, 42), (42, 152, 64), (24, 82, 42), (36, 72, 194),
    (20, 30, 82), (112, 182, 232), (124, 52, 164), (236, 122, 172), (112, 72, 40),
    (212, 192, 150), (0, 150, 150), (170, 200, 60),
], dtype=np.float64)
SKIN_TONES = np.array([(246, 214, 186), (226, 184, 150), (196, 146, 106), (150, 100, 66),
                       (98, 64, 42)], dtype=np.float64)
HAIR_COLOURS = np.array([(18, 14, 12), (70, 44, 26), (130, 88, 46), (214, 184, 112),
                         (150, 150, 150), (150, 52, 22)], dtype=np.float64)

UPPER_PATTERNS = ("solid", "hstripes", "vstripes", "check", "logo", "jacket", "twotone")
LOWER_STYLES = ("trousers", "trousers", "shorts", "skirt")
BAGS = ("none", "none", "backpack", "shoulder", "hand")

RGB = tuple[int, int, int]


def random_colour(rng: np.random.Generator, table: np.ndarray = PALETTE, exclude: int = -1,
                  jitter: float = 14.0) -> tuple[RGB, int]:
    """A table colour (index != exclude) with a small per-identity jitter."""
    choices = [i for i in range(len(table)) if i != exclude]
    idx = int(rng.choice(choices))
    rgb = np.clip(table[idx] + rng.normal(0, jitter, 3), 0, 255)
    return tuple(int(v) for v in rgb), idx


@dataclass(frozen=True)
class Identity:
    """What a person looks like wherever they are seen."""

    upper: RGB
    upper2: RGB          # second colour of the upper pattern
    pattern: str
    stripe: float        # pattern period, as a fraction of the person's height
    long_sleeves: bool
    lower: RGB
    lower_style: str
    shoes: RGB
    skin: RGB
    hair: RGB
    long_hair: bool
    height: float        # relative to the camera's typical person height
    build: float         # body width factor
    hat: RGB | None
    bag: str
    bag_colour: RGB
    bag_side: int        # -1 left, +1 right (as seen from the front)


def clothing_palette(difficulty: Difficulty) -> np.ndarray:
    """The colours clothes are drawn from: the whole palette, or the few a hard set shares."""
    if difficulty.clothing_colours is None:
        return PALETTE
    return PALETTE[list(difficulty.clothing_colours)]


def sample_identity(seed: int, pid: int,
                    difficulty: Difficulty = DIFFICULTIES[STANDARD]) -> Identity:
    """The look of identity ``pid``: the same for every image of it, whatever the camera."""
    rng = rng_for(seed, IDENTITY_STREAM, pid)
    clothes = clothing_palette(difficulty)
    upper, upper_idx = random_colour(rng, clothes)
    upper2, _ = random_colour(rng, clothes, exclude=upper_idx)
    lower, _ = random_colour(rng, clothes, exclude=upper_idx if rng.random() < 0.7 else -1)
    shoes, _ = random_colour(rng, PALETTE[[0, 1, 2, 14]], jitter=8)
    skin, _ = random_colour(rng, SKIN_TONES, jitter=6)
    hair, _ = random_colour(rng, HAIR_COLOURS, jitter=6)
    hat = random_colour(rng)[0] if rng.random() < 0.22 else None
    bag_colour, _ = random_colour(rng)
    return Identity(
        upper=upper, upper2=upper2, pattern=str(rng.choice(UPPER_PATTERNS)),
        stripe=float(rng.uniform(0.035, 0.07)), long_sleeves=bool(rng.random() < 0.6),
        lower=lower, lower_style=str(rng.choice(LOWER_STYLES)), shoes=shoes, skin=skin,
        hair=hair, long_hair=bool(rng.random() < 0.35), height=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.8, 1.25)), hat=hat, bag=str(rng.choice(BAGS)),
        bag_colour=bag_colour, bag_side=int(rng.choice([-1, 1])))

