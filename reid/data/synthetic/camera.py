"""Per-camera appearance shifts: what one camera does to every image it takes.

Each camera has its own scene and optics: background, illumination, colour cast, blur,
resolution, viewpoint (scale, preferred walking direction) and occluders. These nuisances
are strong enough that matching raw pixels mostly finds "same camera", not "same person"
(see ``benchmarks/raw_pixel_baseline.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from reid.data.synthetic.difficulty import DIFFICULTIES, STANDARD, Difficulty
from reid.data.synthetic.identity import RGB
from reid.data.synthetic.kinds import BACKGROUND_KINDS
from reid.data.synthetic.seeds import CAMERA_SET_STREAM, CAMERA_STREAM, rng_for

SCENE_CONTRAST = 45.0  # spread of a scene's grey levels around its camera's brightness
SCENE_TINT = 30.0      # colour tint of scene objects (0 = grey)
# Camera nuisance ranges, tuned so that raw-pixel matching scores ~10-20 % mAP (see module doc)
CAST_RANGE = (0.9, 1.1)        # per-channel colour cast
PERSON_SCALE = (0.8, 0.94)     # typical person height per camera, fraction of image height
VIEW_CONCENTRATION = 2.0       # Dirichlet prior of a camera's front/back/side mix (low = one view)


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
    view_probs: tuple[float, float, float]  # front, back, side (kinds.VIEWS)
    occlusion: float     # probability that an occluder hides part of the person


def sample_camera(seed: int, cam: int,
                  difficulty: Difficulty = DIFFICULTIES[STANDARD]) -> Camera:
    """The scene and optics of camera ``cam`` (0-based)."""
    # Cameras are spread apart rather than drawn independently, so that no seed gives two
    # look-alike cameras: background kinds in turn, brightness levels by the golden ratio.
    shared = rng_for(seed, CAMERA_SET_STREAM)
    kinds = sorted(BACKGROUND_KINDS)
    background = kinds[(cam + int(shared.integers(len(kinds)))) % len(kinds)]
    base = 70.0 + 120.0 * ((shared.random() + cam * 0.618034) % 1.0)  # scene brightness
    rng = rng_for(seed, CAMERA_STREAM, cam)

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
        occlusion=float(rng.uniform(0.0, difficulty.occlusion_max)))


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

