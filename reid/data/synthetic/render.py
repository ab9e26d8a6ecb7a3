"""Rendering one image: scene, person and occluder on a supersampled canvas, then the camera.

JPEGs are written with a fixed quality, no optimisation, no progressive mode and no metadata,
so that the same pixels always give the same bytes.
"""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from reid.data.synthetic.camera import Camera, apply_camera
from reid.data.synthetic.difficulty import DIFFICULTIES, STANDARD, Difficulty
from reid.data.synthetic.identity import Identity, sample_identity
from reid.data.synthetic.person import draw_person
from reid.data.synthetic.scene import BACKGROUNDS, OCCLUDERS, draw_clutter
from reid.data.synthetic.shot import Shot, sample_shot

JPEG_QUALITY = 90
SUPERSAMPLE = 2  # persons are drawn at 2x and downsampled, which anti-aliases their edges


def render_image(rng: np.random.Generator, cam: Camera, size: tuple[int, int],
                 ident: Identity | None, kind: str = "person",
                 difficulty: Difficulty = DIFFICULTIES[STANDARD]) -> Image.Image:
    """One image of ``cam``: a person (``ident``), a distractor (a poor detection) or junk."""
    h, w = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    stand_in = ident or sample_identity(int(rng.integers(2**31)), 0, difficulty)
    shot = sample_shot(rng, stand_in, cam, w, h, difficulty)
    canvas = Image.fromarray(np.clip(BACKGROUNDS[cam.background](cam, shot, w, h), 0, 255)
                             .astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw_clutter(draw, rng, cam, w, h)
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


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # fixed settings, no EXIF: the same pixels always give the same bytes
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()
