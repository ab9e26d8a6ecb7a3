"""Procedural synthetic persons written in the Market-1501 layout, byte-deterministic per seed.

The set exists so that the whole pipeline can run on a fresh clone with no download. It is
built to be *learnable but not trivial*:

* identity lives in cues that survive a camera change: clothing colours and patterns, body
  shape, hair, hat and bags (seen differently from the front, the back and the side);
* each camera has its own scene and optics: background, illumination, colour cast, blur,
  resolution, viewpoint (scale, shift, preferred walking direction) and occluders. These
  nuisances are strong enough that matching raw pixels mostly finds "same camera", not "same
  person" (see ``benchmarks/raw_pixel_baseline.py``).

Every random draw comes from a numpy Generator seeded by (seed, what is drawn, its index), so the
same arguments give the same bytes whatever the order of work; JPEGs are written with a fixed
quality, no optimisation, no progressive mode and no metadata.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from reid.errors import ReidError

logger = logging.getLogger(__name__)

DATASET_DIR = "SyntheticMarket1501"
MARKET_DIR = "Market-1501-v15.09.15"
TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"
PARAMS_FILE = "generator.json"
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # persons are drawn at 2x and downsampled, which anti-aliases their edges
MAX_PID = 9999   # Market file names hold the pid in four digits; 0 is the distractor pid
SCENE_CONTRAST = 45.0  # spread of a scene's grey levels around its camera's brightness
SCENE_TINT = 30.0      # colour tint of scene objects (0 = grey)
# Camera nuisance ranges, tuned so that raw-pixel matching scores ~10-20 % mAP (see module doc)
CAST_RANGE = (0.9, 1.1)        # per-channel colour cast
PERSON_SCALE = (0.8, 0.94)     # typical person height per camera, fraction of image height
OCCLUSION_MAX = 0.3            # highest per-camera occlusion probability
VIEW_CONCENTRATION = 2.0       # Dirichlet prior of a camera's front/back/side mix (low = one view)

# Seed streams: what is drawn, so that e.g. identity 7 and camera 7 get unrelated draws.
_IDENTITY, _CAMERA, _CAMERA_SET, _LAYOUT, _IMAGE, _DISTRACTOR, _JUNK = range(7)

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
VIEWS = ("front", "back", "side")

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- random draws
def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *index])


def _colour(rng: np.random.Generator, table: np.ndarray = PALETTE, exclude: int = -1,
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


def sample_identity(seed: int, pid: int) -> Identity:
    rng = _rng(seed, _IDENTITY, pid)
    upper, upper_idx = _colour(rng)
    upper2, _ = _colour(rng, exclude=upper_idx)
    lower, _ = _colour(rng, exclude=upper_idx if rng.random() < 0.7 else -1)
    shoes, _ = _colour(rng, PALETTE[[0, 1, 2, 14]], jitter=8)
    skin, _ = _colour(rng, SKIN_TONES, jitter=6)
    hair, _ = _colour(rng, HAIR_COLOURS, jitter=6)
    hat = _colour(rng)[0] if rng.random() < 0.22 else None
    bag_colour, _ = _colour(rng)
    return Identity(
        upper=upper, upper2=upper2, pattern=str(rng.choice(UPPER_PATTERNS)),
        stripe=float(rng.uniform(0.035, 0.07)), long_sleeves=bool(rng.random() < 0.6),
        lower=lower, lower_style=str(rng.choice(LOWER_STYLES)), shoes=shoes, skin=skin,
        hair=hair, long_hair=bool(rng.random() < 0.35), height=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.8, 1.25)), hat=hat, bag=str(rng.choice(BAGS)),
        bag_colour=bag_colour, bag_side=int(rng.choice([-1, 1])))


@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes."""

    background: str
    wall: RGB
    floor: RGB
    accents: tuple[RGB, RGB, RGB]
    horizon: float       # floor line, fraction of the image height
    period: float        # background texture period, fraction of the image width
    angle: float         # background texture angle (radians)
    gain: float
    cast: tuple[float, float, float]
    gamma: float
    blur: float          # Gaussian blur radius in output pixels
    noise: float         # sensor noise sigma (0..255)
    lowres: float        # resolution factor (1 = sharp)
    scale: float         # typical person height, fraction of the image height
    view_probs: tuple[float, float, float]  # front, back, side
    occlusion: float     # probability that an occluder hides part of the person


def sample_camera(seed: int, cam: int) -> Camera:
    # Cameras are spread apart rather than drawn independently, so that no seed gives two
    # look-alike cameras: background kinds in turn, brightness levels by the golden ratio.
    shared = _rng(seed, _CAMERA_SET)
    kinds = sorted(BACKGROUNDS)
    background = kinds[(cam + int(shared.integers(len(kinds)))) % len(kinds)]
    base = 70.0 + 120.0 * ((shared.random() + cam * 0.618034) % 1.0)  # scene brightness
    rng = _rng(seed, _CAMERA, cam)

    def scene() -> RGB:
        # muted scene colours: a grey level near the camera's with a mild tint
        level = base + rng.uniform(-SCENE_CONTRAST, SCENE_CONTRAST)
        return tuple(int(v) for v in np.clip(level + rng.uniform(-SCENE_TINT, SCENE_TINT, 3),
                                             0, 255))
    return Camera(
        background=background, wall=scene(), floor=scene(),
        accents=(scene(), scene(), scene()), horizon=float(rng.uniform(0.55, 0.85)),
        period=float(rng.uniform(0.25, 0.7)), angle=float(rng.uniform(-0.6, 0.6)),
        gain=float(rng.uniform(0.65, 1.25)),
        cast=tuple(float(v) for v in rng.uniform(*CAST_RANGE, 3)),
        gamma=float(rng.uniform(0.8, 1.25)), blur=float(rng.uniform(0.0, 1.1)),
        noise=float(rng.uniform(2.0, 7.0)), lowres=float(rng.choice([1.0, 1.0, 0.6, 0.45])),
        scale=float(rng.uniform(*PERSON_SCALE)),
        view_probs=tuple(float(v) for v in rng.dirichlet([VIEW_CONCENTRATION] * 3)),
        occlusion=float(rng.uniform(0.0, OCCLUSION_MAX)))


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


def sample_shot(rng: np.random.Generator, ident: Identity, cam: Camera, w: int, h: int) -> Shot:
    view = str(rng.choice(VIEWS, p=cam.view_probs))
    height = h * cam.scale * ident.height * rng.uniform(0.93, 1.06)
    occluder = str(rng.choice(sorted(OCCLUDERS))) if rng.random() < cam.occlusion else None
    return Shot(view=view, facing=int(rng.choice([-1, 1])), height=height,
                cx=w / 2 + rng.normal(0, 0.07 * w), feet=h * rng.uniform(0.94, 1.0),
                phase=float(rng.uniform(0, 2 * np.pi)), light=float(rng.uniform(0.88, 1.12)),
                bg_shift=float(rng.uniform(0, 1)), occluder=occluder)


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


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera,
             w: int, h: int) -> None:
    """A few scene objects (signs, bins, bikes) whose place changes from image to image."""
    for _ in range(int(rng.integers(1, 4))):
        cw, ch = rng.uniform(0.1, 0.35) * w, rng.uniform(0.06, 0.3) * h
        x, y = rng.uniform(-0.1, 1.0) * w, rng.uniform(0.1, 0.9) * h
        colour = cam.accents[int(rng.integers(0, 3))]
        draw.rectangle([x, y, x + cw, y + ch], fill=colour)


# --------------------------------------------------------------------------- the person
def _upper_pattern(ident: Identity, view: str, w: int, h: int, unit: float) -> np.ndarray:
    """The torso's clothing as an h x w x 3 array (before masking to the torso's shape)."""
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(2, int(ident.stripe * unit))
    second = {
        "solid": np.zeros((h, w), bool),
        "hstripes": (yy // period) % 2 == 1,
        "vstripes": (xx // period) % 2 == 1,
        "check": ((yy // period) + (xx // period)) % 2 == 1,
        "twotone": yy < 0.4 * h,
        # an open jacket shows the shirt in front; a chest logo is only seen from the front
        "jacket": (np.abs(xx - w / 2) < 0.16 * w) & (view == "front"),
        "logo": ((xx - w / 2) ** 2 + (yy - 0.35 * h) ** 2 < (0.2 * w) ** 2) & (view == "front"),
    }[ident.pattern]
    return np.where(second[..., None], np.array(ident.upper2), np.array(ident.upper))


def _paint(img: Image.Image, polygon: list[tuple[float, float]], fill: np.ndarray) -> None:
    """Paste ``fill`` (an array as large as the polygon's bounding box) inside ``polygon``."""
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    x0, y0 = int(np.floor(min(xs))), int(np.floor(min(ys)))
    h, w = fill.shape[:2]
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in polygon], fill=255)
    img.paste(Image.fromarray(fill.astype(np.uint8)), (x0, y0), mask)


def _limb(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float],
          width: float, colour: RGB) -> None:
    draw.line([a, b], fill=colour, width=max(1, int(round(width))))
    r = width / 2
    draw.ellipse([b[0] - r, b[1] - r, b[0] + r, b[1] + r], fill=colour)


def draw_person(img: Image.Image, ident: Identity, shot: Shot) -> None:
    """Draw the person of ``ident`` as ``shot`` sees them, onto ``img`` (in place)."""
    draw = ImageDraw.Draw(img)
    s, cx, top = shot.height, shot.cx, shot.feet - shot.height
    side = shot.view == "side"
    half_w = 0.125 * s * ident.build * (0.62 if side else 1.0)
    # as seen in the image, bags on the person's right appear on the left from the front
    bag_x = -ident.bag_side if shot.view == "front" else ident.bag_side
    if side:
        bag_x = -shot.facing
    shoulder_y, hip_y, knee_y = top + 0.16 * s, top + 0.52 * s, top + 0.74 * s
    swing = np.sin(shot.phase)

    if ident.bag == "backpack" and side:
        bx = cx + bag_x * half_w
        draw.rectangle([bx - 0.09 * s, shoulder_y + 0.02 * s, bx + 0.09 * s, top + 0.44 * s],
                       fill=ident.bag_colour)
    if ident.long_hair and shot.view != "back":
        draw.rectangle([cx - 0.07 * s, top + 0.05 * s, cx + 0.07 * s, top + 0.24 * s],
                       fill=ident.hair)

    _draw_legs(draw, ident, shot, cx, hip_y, knee_y, swing)
    torso = [(cx - half_w, shoulder_y), (cx + half_w, shoulder_y),
             (cx + 0.85 * half_w, hip_y), (cx - 0.85 * half_w, hip_y)]
    x0, x1 = int(np.floor(cx - half_w)), int(np.floor(cx + half_w))
    y0, y1 = int(np.floor(shoulder_y)), int(np.floor(hip_y))
    _paint(img, torso, _upper_pattern(ident, shot.view, x1 - x0 + 2, y1 - y0 + 2, s))
    _draw_arms(draw, ident, shot, cx, half_w, shoulder_y, swing)
    _draw_head(draw, ident, shot, cx, top)
    _draw_bag(draw, ident, shot, cx, half_w, shoulder_y, hip_y, bag_x)


def _draw_legs(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float,
               hip_y: float, knee_y: float, swing: float) -> None:
    s, feet = shot.height, shot.feet
    leg_w = 0.08 * s * ident.build ** 0.5
    if shot.view == "side":
        stride = 0.13 * s * swing
        feet_x = (cx + stride, cx - stride)
        hips_x = (cx, cx)
    else:
        spread = 0.02 * s * abs(swing)
        hips_x = (cx - 0.05 * s, cx + 0.05 * s)
        feet_x = (hips_x[0] - spread, hips_x[1] + spread)
    # trousers cover the leg; shorts stop above the knee; a skirt is drawn over bare legs
    cloth_end = {"trousers": 1.0, "shorts": 0.45, "skirt": 0.0}[ident.lower_style]
    for hx, fx in zip(hips_x, feet_x):
        knee = (hx + cloth_end * (fx - hx), hip_y + cloth_end * (feet - 0.03 * s - hip_y))
        _limb(draw, (hx, hip_y), (fx, feet - 0.03 * s), leg_w, ident.skin)
        if cloth_end > 0:
            _limb(draw, (hx, hip_y), knee, leg_w * 1.1, ident.lower)
        draw.ellipse([fx - 0.055 * s, feet - 0.05 * s, fx + 0.055 * s, feet], fill=ident.shoes)
    if ident.lower_style == "skirt":
        width = 0.11 * s * ident.build
        draw.polygon([(cx - width, hip_y), (cx + width, hip_y), (cx + 1.5 * width, knee_y),
                      (cx - 1.5 * width, knee_y)], fill=ident.lower)
    else:
        draw.rectangle([cx - 0.1 * s * ident.build, hip_y - 0.01 * s,
                        cx + 0.1 * s * ident.build, hip_y + 0.06 * s], fill=ident.lower)


def _draw_arms(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float,
               half_w: float, shoulder_y: float, swing: float) -> None:
    s = shot.height
    arm_w, hand_y = 0.06 * s, shoulder_y + 0.36 * s
    if shot.view == "side":
        pairs = [((cx, shoulder_y + 0.02 * s), (cx - 0.1 * s * swing, hand_y))]
    else:
        pairs = [((cx + d * half_w, shoulder_y + 0.02 * s),
                  (cx + d * (half_w + 0.03 * s), hand_y)) for d in (-1, 1)]
    for shoulder, hand in pairs:
        _limb(draw, shoulder, hand, arm_w, ident.skin)
        sleeve_end = 1.0 if ident.long_sleeves else 0.4
        elbow = (shoulder[0] + sleeve_end * (hand[0] - shoulder[0]),
                 shoulder[1] + sleeve_end * (hand[1] - shoulder[1]))
        _limb(draw, shoulder, elbow, arm_w * 1.05, ident.upper)


def _draw_head(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float,
               top: float) -> None:
    s = shot.height
    r = 0.065 * s
    hy = top + 0.075 * s
    hx = cx + (0.015 * s * shot.facing if shot.view == "side" else 0.0)
    box = [hx - r, hy - r, hx + r, hy + r]
    draw.ellipse(box, fill=ident.hair if shot.view == "back" else ident.skin)
    draw.chord([hx - r, hy - r * 1.05, hx + r, hy + r * 0.7], 180, 360, fill=ident.hair)
    if ident.long_hair and shot.view == "back":
        draw.rectangle([hx - r, hy, hx + r, top + 0.25 * s], fill=ident.hair)
    if ident.hat is not None:
        draw.rectangle([hx - 1.3 * r, hy - 0.45 * r, hx + 1.3 * r, hy - 0.2 * r], fill=ident.hat)
        draw.chord([hx - r, hy - 1.25 * r, hx + r, hy + 0.3 * r], 180, 360, fill=ident.hat)


def _draw_bag(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float, half_w: float,
              shoulder_y: float, hip_y: float, bag_x: int) -> None:
    s, colour = shot.height, ident.bag_colour
    strap = max(1, int(0.02 * s))
    if ident.bag == "backpack" and shot.view == "back":
        draw.rectangle([cx - 0.8 * half_w, shoulder_y + 0.03 * s, cx + 0.8 * half_w,
                        shoulder_y + 0.3 * s], fill=colour)
    elif ident.bag == "backpack" and shot.view == "front":
        for d in (-0.55, 0.55):
            draw.line([(cx + d * half_w, shoulder_y), (cx + d * half_w, hip_y - 0.08 * s)],
                      fill=colour, width=strap)
    elif ident.bag == "shoulder":
        bx = cx + bag_x * (half_w + 0.04 * s)
        draw.line([(cx - bag_x * half_w * 0.8, shoulder_y), (bx, hip_y - 0.02 * s)],
                  fill=colour, width=strap)
        draw.rectangle([bx - 0.06 * s, hip_y - 0.06 * s, bx + 0.06 * s, hip_y + 0.06 * s],
                       fill=colour)
    elif ident.bag == "hand":
        bx = cx + bag_x * (half_w + 0.05 * s)
        draw.rectangle([bx - 0.05 * s, hip_y, bx + 0.05 * s, hip_y + 0.13 * s],
                       fill=colour)


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
    draw.rectangle([x0, top, x1, h * 0.6], fill=_colour(rng)[0])
    draw.rectangle([x0, h * 0.6, x1, h + 1], fill=_colour(rng)[0])


OCCLUDERS: dict[str, Callable[..., None]] = {
    "box": _occ_box, "pole": _occ_pole, "passer": _occ_passer,
}


# --------------------------------------------------------------------------- camera optics
def apply_camera(img: Image.Image, cam: Camera, shot_light: float,
                 rng: np.random.Generator) -> Image.Image:
    """Resolution loss, blur, illumination, colour cast, gamma and noise of one camera."""
    w, h = img.size
    if cam.lowres < 1.0:
        small = (max(1, int(w * cam.lowres)), max(1, int(h * cam.lowres)))
        img = img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    radius = cam.blur * rng.uniform(0.7, 1.3)
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(img, dtype=np.float64) / 255.0
    arr = np.clip(arr * np.array(cam.cast) * cam.gain * shot_light, 0.0, 1.0) ** cam.gamma
    arr = arr * 255.0 + rng.normal(0.0, cam.noise, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # fixed settings, no EXIF: the same pixels always give the same bytes
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- rendering
def render_image(rng: np.random.Generator, cam: Camera, size: tuple[int, int],
                 ident: Identity | None, kind: str = "person") -> Image.Image:
    """One image of ``cam``: a person (``ident``), a distractor (a poor detection) or junk."""
    h, w = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    stand_in = ident or sample_identity(int(rng.integers(2**31)), 0)
    shot = sample_shot(rng, stand_in, cam, w, h)
    canvas = Image.fromarray(np.clip(BACKGROUNDS[cam.background](cam, shot, w, h), 0, 255)
                             .astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, cam, w, h)
    if kind == "person":
        draw_person(canvas, stand_in, shot)
    elif kind == "distractor":
        _draw_poor_detection(canvas, rng, stand_in, shot)
    # junk: scene only (a false detection)
    if shot.occluder is not None:
        OCCLUDERS[shot.occluder](draw, rng, cam, w, h)
    canvas = canvas.resize((size[1], size[0]), Image.BOX)
    return apply_camera(canvas, cam, shot.light, rng)


def _draw_poor_detection(canvas: Image.Image, rng: np.random.Generator, ident: Identity,
                         shot: Shot) -> None:
    """A badly framed person: only the top or a side of someone, far off the box centre."""
    w, h = canvas.size
    off_centre = replace(shot, cx=shot.cx + rng.choice([-1, 1]) * rng.uniform(0.35, 0.6) * w,
                         feet=shot.feet + rng.uniform(0.0, 0.5) * h)
    draw_person(canvas, ident, off_centre)


# --------------------------------------------------------------------------- the split plan
@dataclass(frozen=True)
class Item:
    """One file to write: what to render and where."""

    split: str
    pid: int
    cam: int        # 0-based
    name: str
    kind: str       # person | distractor | junk
    index: int      # the image's seed index within its stream


def _market_name(pid: int, cam: int, seq: int, frame: int, box: int) -> str:
    pid_text = "-1" if pid < 0 else f"{pid:04d}"
    return f"{pid_text}_c{cam + 1}s{seq}_{frame:06d}_{box:02d}.jpg"


def _identity_items(seed: int, pid: int, num_cameras: int, images_per_id: int,
                    is_test: bool) -> list[Item]:
    """The images of one identity: >= 2 cameras, >= 2 images per camera.

    For a test identity the first image of each camera is its query; the rest go to the
    gallery, so every query has a match in another camera.
    """
    rng = _rng(seed, _LAYOUT, pid)
    max_cams = min(num_cameras, images_per_id // 2)
    cams = sorted(int(c) for c in rng.choice(num_cameras, int(rng.integers(2, max_cams + 1)),
                                             replace=False))
    counts = np.full(len(cams), 2) + rng.multinomial(images_per_id - 2 * len(cams),
                                                     np.full(len(cams), 1 / len(cams)))
    items, index = [], 0
    for cam, count in zip(cams, counts):
        seq, frame = int(rng.integers(1, 7)), int(rng.integers(100, 150000))
        for j in range(int(count)):
            frame += int(rng.integers(5, 60))
            split = TRAIN_DIR if not is_test else (QUERY_DIR if j == 0 else GALLERY_DIR)
            name = _market_name(pid, cam, seq, frame, int(rng.integers(1, 5)))
            items.append(Item(split, pid, cam, name, "person", index))
            index += 1
    return items


def _background_items(seed: int, kind: str, pid: int, count: int, num_cameras: int
                      ) -> list[Item]:
    """Distractor (pid 0) or junk (pid -1) images of the gallery, with unique names."""
    stream = _DISTRACTOR if kind == "distractor" else _JUNK
    items, used = [], set()
    for i in range(count):
        rng = _rng(seed, stream, i, 0)
        cam, seq = int(rng.integers(num_cameras)), int(rng.integers(1, 7))
        frame = int(rng.integers(100, 150000))
        name = _market_name(pid, cam, seq, frame, 1)
        while name in used:  # deterministic: the same collisions resolve the same way
            frame += 1
            name = _market_name(pid, cam, seq, frame, 1)
        used.add(name)
        items.append(Item(GALLERY_DIR, pid, cam, name, kind, i))
    return items


def plan_items(seed: int, num_train_ids: int, num_test_ids: int, num_cameras: int,
               images_per_id: int, num_distractors: int, num_junk: int) -> list[Item]:
    """Every file of the set. Train pids are 1..T, test pids T+1..T+N."""
    items = []
    for pid in range(1, num_train_ids + num_test_ids + 1):
        items += _identity_items(seed, pid, num_cameras, images_per_id,
                                 is_test=pid > num_train_ids)
    items += _background_items(seed, "distractor", 0, num_distractors, num_cameras)
    items += _background_items(seed, "junk", -1, num_junk, num_cameras)
    return items


def _render_item(seed: int, item: Item, cameras: list[Camera], size: tuple[int, int]) -> bytes:
    if item.kind == "person":
        rng = _rng(seed, _IMAGE, item.pid, item.index)
        ident = sample_identity(seed, item.pid)
    else:
        rng = _rng(seed, _DISTRACTOR if item.kind == "distractor" else _JUNK, item.index, 1)
        ident = None
    return encode_jpeg(render_image(rng, cameras[item.cam], size, ident, item.kind))


# --------------------------------------------------------------------------- public entry
def _check_arguments(seed: int, num_train_ids: int, num_test_ids: int, num_cameras: int,
                     images_per_id: int, num_distractors: int, num_junk: int,
                     size: tuple[int, int]) -> None:
    rules = [
        (seed >= 0, "seed must be >= 0"),
        (num_train_ids >= 1 and num_test_ids >= 1, "num_train_ids and num_test_ids must be >= 1"),
        (num_train_ids + num_test_ids <= MAX_PID,
         f"num_train_ids + num_test_ids must be <= {MAX_PID} (four-digit Market pids)"),
        (num_cameras >= 2, "num_cameras must be >= 2 (queries are matched across cameras)"),
        (images_per_id >= 4, "images_per_id must be >= 4 (2 cameras x 2 images)"),
        (num_distractors >= 0 and num_junk >= 0, "num_distractors and num_junk must be >= 0"),
        (len(size) == 2 and min(size) >= 16, "size must be (height, width), both >= 16 pixels"),
    ]
    for ok, message in rules:
        if not ok:
            raise ReidError(f"synthetic dataset: {message}")


def generate_synthetic_market(root: str | os.PathLike, *, seed: int = 0,
                              num_train_ids: int = 100, num_test_ids: int = 100,
                              num_cameras: int = 6, images_per_id: int = 12,
                              num_distractors: int = 50, num_junk: int = 30,
                              size: tuple[int, int] = (128, 64)) -> Path:
    """Write ``root/SyntheticMarket1501/Market-1501-v15.09.15/{bounding_box_train,query,
    bounding_box_test}`` with Market-1501 file names, and return ``root/SyntheticMarket1501``.

    ``size`` is (height, width). The set is built in ``root/.SyntheticMarket1501.partial`` and
    renamed into place at the end, so an interrupted run never leaves a folder that looks
    complete (a partial folder left by a killed run is removed by the next one). An existing
    set at the target is replaced. ``SyntheticMarket1501/generator.json`` records the arguments.
    """
    size = tuple(int(s) for s in size)
    _check_arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_id,
                     num_distractors, num_junk, size)
    params = generator_arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_id,
                                 num_distractors, num_junk, size)
    root = Path(root)
    target, partial = root / DATASET_DIR, root / f".{DATASET_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _write_set(partial, params)
        _replace_dir(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("synthetic dataset written to %s", target)
    return target


def _write_set(out: Path, params: dict) -> None:
    seed, size = params["seed"], tuple(params["size"])
    cameras = [sample_camera(seed, c) for c in range(params["num_cameras"])]
    items = plan_items(seed, params["num_train_ids"], params["num_test_ids"],
                       params["num_cameras"], params["images_per_id"],
                       params["num_distractors"], params["num_junk"])
    base = out / MARKET_DIR
    for split in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR):
        (base / split).mkdir(parents=True)
    for item in tqdm(items, desc="synthetic images", unit="img", leave=False,
                     disable=not logger.isEnabledFor(logging.INFO)):
        (base / item.split / item.name).write_bytes(_render_item(seed, item, cameras, size))
    (out / PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is moved aside first, then deleted."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def generated_with(target: str | Path) -> dict | None:
    """The arguments a set at ``target`` was generated with (None when there is no record)."""
    record = Path(target) / PARAMS_FILE
    return json.loads(record.read_text()) if record.is_file() else None


def generator_arguments(seed: int = 0, num_train_ids: int = 100, num_test_ids: int = 100,
                        num_cameras: int = 6, images_per_id: int = 12, num_distractors: int = 50,
                        num_junk: int = 30, size=(128, 64)) -> dict:
    """The record ``generate_synthetic_market`` would write for these arguments."""
    return dict(seed=seed, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                num_cameras=num_cameras, images_per_id=images_per_id,
                num_distractors=num_distractors, num_junk=num_junk,
                size=[int(s) for s in size], version=GENERATOR_VERSION)
