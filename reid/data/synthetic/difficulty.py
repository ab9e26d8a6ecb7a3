"""How hard a generated set is: the nuisances that make identities harder to tell apart.

``standard`` is the set `make data` writes (its values are the generator's historical constants,
so its bytes match ``data.dvc``). ``hard`` is the harder folder of the FastReID accuracy
benchmark (``benchmarks/fastreid_accuracy.py``, issue 11): most people wear the same few
clothing colours (identity then lives in patterns, body shape, hair, hat and bags), cameras are
occluded up to twice as often, and the person's size and position in the box vary more, as with
a real detector's crops.

Every setting changes values, never the number of random draws, so the same seed gives the same
identities, cameras and shots, only seen harder.
"""
from __future__ import annotations

from dataclasses import dataclass

from reid.errors import ReidError


@dataclass(frozen=True)
class Difficulty:
    """The knobs of one difficulty setting."""

    # Palette indices (identity.PALETTE) the clothing colours are drawn from; None: all of them.
    clothing_colours: tuple[int, ...] | None
    occlusion_max: float                 # highest per-camera occlusion probability
    scale_jitter: tuple[float, float]    # per-image factor on the person's height
    shift_sigma: float                   # per-image horizontal offset, fraction of the width


DIFFICULTIES: dict[str, Difficulty] = {
    "standard": Difficulty(clothing_colours=None, occlusion_max=0.3, scale_jitter=(0.93, 1.06),
                           shift_sigma=0.07),
    # black, white, grey, navy, brown: the colours most of a real crowd wears
    "hard": Difficulty(clothing_colours=(0, 1, 2, 10, 14), occlusion_max=0.65,
                       scale_jitter=(0.72, 1.12), shift_sigma=0.12),
}
STANDARD = "standard"


def get_difficulty(name: str) -> Difficulty:
    """The setting called ``name`` (a ReidError naming the valid ones otherwise)."""
    try:
        return DIFFICULTIES[name]
    except KeyError:
        raise ReidError(f"synthetic dataset: difficulty must be one of {sorted(DIFFICULTIES)}, "
                        f"got {name!r}") from None
