"""N more distractors for a generated synthetic set, in the Market-1501+500k layout.

``append_distractors(dataset_dir, count)`` renders ``count`` procedural distractor images
(badly framed people, as the generator's own distractors, with the set's cameras and size)
into ``images_distractor/`` beside the set's splits, where ``SyntheticMarket1501_500k``
adds them to the gallery (as ``Market1501_500k`` does with the real 500k). Image ``i`` is
a function of (the set's seed, ``i``) only: appending 1,000 then asking for 2,000 gives the
same first 1,000 files. The folder is written beside its target and renamed into place, so
an interrupted run never leaves a partial one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from tqdm import tqdm

from reid.data.synthetic import MARKET_DIR, PARAMS_FILE, generated_with
from reid.data.synthetic.camera import sample_camera
from reid.data.synthetic.render import encode_jpeg, render_image
from reid.data.synthetic.seeds import DISTRACTOR_STREAM, rng_for
from reid.errors import ReidError

logger = logging.getLogger(__name__)

DISTRACTOR_DIR = "images_distractor"
RECORD = "distractors.json"
# The generator draws its own distractors from DISTRACTOR_STREAM with (index, 0) and
# (index, 1); these use (index, 2) and (index, 3): unrelated draws, never the same image.
_LAYOUT_SLOT, _IMAGE_SLOT = 2, 3


def distractor_name(index: int, cam: int, seq: int) -> str:
    """A Market name with pid 0, unique per index (frame and box spell the index)."""
    return f"0000_c{cam + 1}s{seq}_{index // 100:06d}_{index % 100:02d}.jpg"


def append_distractors(dataset_dir: str | os.PathLike, count: int) -> Path:
    """Write ``count`` distractors into ``dataset_dir``'s ``images_distractor/`` (replacing
    an older folder) and return it; ``dataset_dir`` is a generated SyntheticMarket1501."""
    dataset_dir = Path(dataset_dir)
    params = generated_with(dataset_dir)
    if params is None:
        raise ReidError(f"{dataset_dir} is not a generated synthetic set (no {PARAMS_FILE}); "
                        "generate it first (reid prepare)")
    if count < 1 or count >= 100_000_000:
        raise ReidError(f"append_distractors: count must be 1 .. 99,999,999, got {count}")
    seed, size = params["seed"], tuple(params["size"])
    cameras = [sample_camera(seed, c) for c in range(params["num_cameras"])]
    target = dataset_dir / MARKET_DIR / DISTRACTOR_DIR
    partial = target.with_name(f".{DISTRACTOR_DIR}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for index in tqdm(range(count), desc="synthetic distractors", unit="img", leave=False,
                          disable=not logger.isEnabledFor(logging.INFO)):
            layout = rng_for(seed, DISTRACTOR_STREAM, index, _LAYOUT_SLOT)
            cam, seq = int(layout.integers(len(cameras))), int(layout.integers(1, 7))
            image = render_image(rng_for(seed, DISTRACTOR_STREAM, index, _IMAGE_SLOT),
                                 cameras[cam], size, None, "distractor")
            (partial / distractor_name(index, cam, seq)).write_bytes(encode_jpeg(image))
        old = target.with_name(f".{DISTRACTOR_DIR}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (dataset_dir / RECORD).write_text(json.dumps({"count": count}) + "\n")
    logger.info("%d synthetic distractors written to %s", count, target)
    return target
