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

Modules: ``identity`` (what a person looks like), ``camera`` (what a camera does to its images),
``scene`` (backgrounds, clutter, occluders), ``shot`` (where the person stands in one image),
``person`` (drawing the person), ``render`` (one image to JPEG bytes), ``layout`` (which file
goes to which split under which name), ``seeds`` (the random streams). This module writes the
set.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from tqdm import tqdm

from reid.data.synthetic.camera import Camera, sample_camera
from reid.data.synthetic.difficulty import STANDARD, Difficulty, get_difficulty
from reid.data.synthetic.identity import sample_identity
from reid.data.synthetic.layout import (GALLERY_DIR, MAX_PID, QUERY_DIR, TRAIN_DIR, Item,
                                        plan_items)
from reid.data.synthetic.render import encode_jpeg, render_image
from reid.data.synthetic.seeds import DISTRACTOR_STREAM, IMAGE_STREAM, JUNK_STREAM, rng_for
from reid.errors import ReidError

__all__ = ["DATASET_DIR", "MARKET_DIR", "generate_synthetic_market", "generated_with",
           "generator_arguments"]

logger = logging.getLogger(__name__)

DATASET_DIR = "SyntheticMarket1501"
MARKET_DIR = "Market-1501-v15.09.15"
PARAMS_FILE = "generator.json"
GENERATOR_VERSION = 1


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
                              size: tuple[int, int] = (128, 64),
                              difficulty: str = STANDARD) -> Path:
    """Write ``root/SyntheticMarket1501/Market-1501-v15.09.15/{bounding_box_train,query,
    bounding_box_test}`` with Market-1501 file names, and return ``root/SyntheticMarket1501``.

    ``size`` is (height, width). The set is built in ``root/.SyntheticMarket1501.partial`` and
    renamed into place at the end, so an interrupted run never leaves a folder that looks
    complete (a partial folder left by a killed run is removed by the next one). An existing
    set at the target is replaced. ``SyntheticMarket1501/generator.json`` records the arguments.
    ``difficulty`` names a setting of ``difficulty.DIFFICULTIES`` (``"hard"``: shared clothing
    colours, more occlusion, more scale and position jitter).
    """
    size = tuple(int(s) for s in size)
    _check_arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_id,
                     num_distractors, num_junk, size)
    get_difficulty(difficulty)
    params = generator_arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_id,
                                 num_distractors, num_junk, size, difficulty)
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
    difficulty = get_difficulty(params.get("difficulty", STANDARD))
    cameras = [sample_camera(seed, c, difficulty) for c in range(params["num_cameras"])]
    items = plan_items(seed, params["num_train_ids"], params["num_test_ids"],
                       params["num_cameras"], params["images_per_id"],
                       params["num_distractors"], params["num_junk"])
    base = out / MARKET_DIR
    for split in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR):
        (base / split).mkdir(parents=True)
    for item in tqdm(items, desc="synthetic images", unit="img", leave=False,
                     disable=not logger.isEnabledFor(logging.INFO)):
        (base / item.split / item.name).write_bytes(
            _render_item(seed, item, cameras, size, difficulty))
    (out / PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _render_item(seed: int, item: Item, cameras: list[Camera], size: tuple[int, int],
                 difficulty: Difficulty) -> bytes:
    """The JPEG bytes of one planned file."""
    # Kept here and called through this module's namespace, so that a test can make the
    # rendering fail midway and check that no half-written set is left behind.
    if item.kind == "person":
        rng = rng_for(seed, IMAGE_STREAM, item.pid, item.index)
        ident = sample_identity(seed, item.pid, difficulty)
    else:
        rng = rng_for(seed, DISTRACTOR_STREAM if item.kind == "distractor" else JUNK_STREAM,
                      item.index, 1)
        ident = None
    return encode_jpeg(render_image(rng, cameras[item.cam], size, ident, item.kind, difficulty))


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
                        num_junk: int = 30, size=(128, 64), difficulty: str = STANDARD) -> dict:
    """The record ``generate_synthetic_market`` would write for these arguments."""
    record = dict(seed=seed, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                  num_cameras=num_cameras, images_per_id=images_per_id,
                  num_distractors=num_distractors, num_junk=num_junk,
                  size=[int(s) for s in size], version=GENERATOR_VERSION)
    # Recorded only when not standard: the standard record (and so data.dvc's hash) predates it.
    if difficulty != STANDARD:
        record["difficulty"] = difficulty
    return record
