"""Seeded random streams: every random draw of the generator comes from one of them.

A Generator is seeded by (seed, stream, index...), so identity 7 and camera 7 get unrelated
draws, and each image gets the same draws whatever order the images are made in.
"""
from __future__ import annotations

import numpy as np

# What is drawn: one stream per kind of draw.
(IDENTITY_STREAM, CAMERA_STREAM, CAMERA_SET_STREAM, LAYOUT_STREAM, IMAGE_STREAM,
 DISTRACTOR_STREAM, JUNK_STREAM) = range(7)


def rng_for(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *index])
