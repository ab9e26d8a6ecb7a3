"""The split plan: which images go to which split, under which Market-1501 file name.

Names follow Market-1501, ``{pid:04d}_c{camera}s{sequence}_{frame:06d}_{box:02d}.jpg`` with pid
0 for distractors and -1 for junk, so the set is read by the ordinary Market reader.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reid.data.synthetic.seeds import DISTRACTOR_STREAM, JUNK_STREAM, LAYOUT_STREAM, rng_for

TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"
MAX_PID = 9999   # Market file names hold the pid in four digits; 0 is the distractor pid


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
    rng = rng_for(seed, LAYOUT_STREAM, pid)
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
    stream = DISTRACTOR_STREAM if kind == "distractor" else JUNK_STREAM
    items, used = [], set()
    for i in range(count):
        rng = rng_for(seed, stream, i, 0)
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
