"""The scene around the person: camera backgrounds, clutter and occluders.

Each kind of background and occluder is a registry entry, so a camera or shot names its kind
and adding one is a new function, a line in the registry and its name in ``kinds.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import ImageDraw

from reid.data.synthetic.identity import RGB, random_colour
from reid.data.synthetic.kinds import BACKGROUND_KINDS, OCCLUDER_KINDS

if TYPE_CHECKING:  # annotations only
    from reid.data.synthetic.camera import Camera
    from reid.data.synthetic.shot import Shot


# --------------------------------------------------------------------------- backgrounds
def _texture(cam: Camera, shot: Shot, w: int, h: int, colours: tuple[RGB, RGB]) -> np.ndarray:
    """Two-colour stripes at the camera's angle and period, shifted per image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    period = cam.period * w
    along = xx * np.cos(cam.angle) + yy * np.sin(cam.angle) + shot.bg_shift * period
    band = (np.floor(along / (period / 2)) % 2).astype(bool)
    return np.where(band[..., None], np.array(colours[0]), np.array(colours[1]))


def _bg_stripes(cam: Camera, shot: Shot, w: int, h: int) -> np.ndarray:
    return _texture(cam, shot, w, h, (cam.wall, cam.accents[0]))


def _bg_wall_floor(cam: Camera, shot: Shot, w: int, h: int) -> np.ndarray:
    out = np.empty((h, w, 3))
    out[:] = cam.wall
    # pillars / windows on the wall, moving with the person's position in the scene
    period = cam.period * w
    xx = np.arange(w) + shot.bg_shift * period
    pillar = (xx % period) < 0.35 * period
    horizon = int(cam.horizon * h)
    out[: horizon, pillar] = cam.accents[0]
    out[horizon:] = cam.floor
    return out


def _bg_tiles(cam: Camera, shot: Shot, w: int, h: int) -> np.ndarray:
    out = np.empty((h, w, 3))
    out[:] = cam.wall
    yy, xx = np.mgrid[0:h, 0:w]
    cell = max(2, int(cam.period * w / 2))
    offset = int(shot.bg_shift * 2 * cell)
    checker = (((yy // cell) + ((xx + offset) // cell)) % 2).astype(bool)
    horizon = int(cam.horizon * h)
    floor = np.where(checker[..., None], np.array(cam.floor), np.array(cam.accents[1]))
    out[horizon:] = floor[horizon:]
    return out


def _bg_street(cam: Camera, shot: Shot, w: int, h: int) -> np.ndarray:
    # a vertical gradient (sky or lit wall) above a road with lane marks
    t = np.linspace(0, 1, h)[:, None, None]
    out = np.broadcast_to((1 - t) * np.array(cam.wall) + t * np.array(cam.accents[2]),
                          (h, w, 3)).copy()
    horizon = int(cam.horizon * h)
    out[horizon:] = cam.floor
    xx = np.arange(w)
    mark = ((xx + shot.bg_shift * w) % (0.5 * w)) < 0.18 * w
    row = min(h - 1, horizon + max(1, (h - horizon) // 2))
    out[row: row + max(1, h // 40), mark] = cam.accents[0]
    return out


BACKGROUNDS: dict[str, Callable[[Camera, Shot, int, int], np.ndarray]] = {
    "stripes": _bg_stripes, "wall_floor": _bg_wall_floor, "tiles": _bg_tiles,
    "street": _bg_street,
}


def draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera,
                 w: int, h: int) -> None:
    """A few scene objects (signs, bins, bikes) whose place changes from image to image."""
    for _ in range(int(rng.integers(1, 4))):
        cw, ch = rng.uniform(0.1, 0.35) * w, rng.uniform(0.06, 0.3) * h
        x, y = rng.uniform(-0.1, 1.0) * w, rng.uniform(0.1, 0.9) * h
        colour = cam.accents[int(rng.integers(0, 3))]
        draw.rectangle([x, y, x + cw, y + ch], fill=colour)


# --------------------------------------------------------------------------- occluders
def _occ_box(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera,
             w: int, h: int) -> None:
    """A bench / car / barrier hiding the legs."""
    y = h * rng.uniform(0.6, 0.82)
    draw.rectangle([-1, y, w + 1, h + 1], fill=cam.accents[int(rng.integers(0, 3))])


def _occ_pole(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera,
              w: int, h: int) -> None:
    x, pw = w * rng.uniform(0.15, 0.75), w * rng.uniform(0.12, 0.3)
    draw.rectangle([x, -1, x + pw, h + 1], fill=cam.accents[int(rng.integers(0, 3))])


def _occ_passer(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera,
                w: int, h: int) -> None:
    """Part of another pedestrian entering from one side."""
    edge = rng.choice([-1, 1])
    x0 = w * (0.0 if edge < 0 else rng.uniform(0.7, 0.85))
    x1 = w * (rng.uniform(0.15, 0.3) if edge < 0 else 1.0)
    top = h * rng.uniform(0.1, 0.3)
    draw.rectangle([x0, top, x1, h * 0.6], fill=random_colour(rng)[0])
    draw.rectangle([x0, h * 0.6, x1, h + 1], fill=random_colour(rng)[0])


OCCLUDERS: dict[str, Callable[..., None]] = {
    "box": _occ_box, "pole": _occ_pole, "passer": _occ_passer,
}

# Cameras and shots draw kinds by the names in kinds.py: the registries hold exactly those.
for _registry, _names in ((BACKGROUNDS, BACKGROUND_KINDS), (OCCLUDERS, OCCLUDER_KINDS)):
    if sorted(_registry) != sorted(_names):
        raise RuntimeError(f"scene registry {sorted(_registry)} != kinds.py {sorted(_names)}")
