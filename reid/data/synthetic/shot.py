"""The per-image draw: where the person stands in one image, how they face and move."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reid.data.synthetic.camera import Camera
from reid.data.synthetic.difficulty import DIFFICULTIES, STANDARD, Difficulty
from reid.data.synthetic.identity import Identity
from reid.data.synthetic.kinds import OCCLUDER_KINDS, VIEWS


@dataclass(frozen=True)
class Shot:
    """The per-image draw: where the person stands, how they face and move."""

    view: str
    facing: int          # side view: +1 walking right, -1 left
    height: float        # person height in pixels (supersampled canvas)
    cx: float
    feet: float
    phase: float         # walking phase (legs and arms)
    light: float
    bg_shift: float
    occluder: str | None


def sample_shot(rng: np.random.Generator, ident: Identity, cam: Camera, w: int, h: int,
                difficulty: Difficulty = DIFFICULTIES[STANDARD]) -> Shot:
    """Where ``ident`` stands in one image of ``cam`` (a w x h canvas) and how they look."""
    view = str(rng.choice(VIEWS, p=cam.view_probs))
    height = h * cam.scale * ident.height * rng.uniform(*difficulty.scale_jitter)
    occluder = str(rng.choice(sorted(OCCLUDER_KINDS))) if rng.random() < cam.occlusion else None
    return Shot(view=view, facing=int(rng.choice([-1, 1])), height=height,
                cx=w / 2 + rng.normal(0, difficulty.shift_sigma * w), feet=h * rng.uniform(0.94, 1.0),
                phase=float(rng.uniform(0, 2 * np.pi)), light=float(rng.uniform(0.88, 1.12)),
                bg_shift=float(rng.uniform(0, 1)), occluder=occluder)

