"""Market-1501+500k's distractor folder (Market1501_500k, FastReID's images/ too) and the
synthetic set's appended distractors (SyntheticMarket1501_500k)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reid.data.datasets import DATASET_REGISTRY
from reid.data.synthetic import MARKET_DIR, generate_synthetic_market
from reid.data.synthetic.distractors import DISTRACTOR_DIR, append_distractors
from reid.errors import ReidError


def jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (90, 20, 20)).save(path)


def market_folder(root: Path, distractor_dir: str | None) -> Path:
    base = root / "Market-1501-v15.09.15"
    for name in ("bounding_box_train/0002_c1s1_000451_01.jpg",
                 "query/0003_c1s1_000551_01.jpg", "bounding_box_test/0003_c2s1_000651_01.jpg",
                 "bounding_box_test/0000_c3s1_000751_01.jpg"):
        jpg(base / name)
    if distractor_dir:
        for name in ("0000_c1s9_000001_01.jpg", "0000_c6s3_999999_00.jpg",
                     "-1_c2s1_000002_01.jpg"):
            jpg(base / distractor_dir / name)
    return base


@pytest.mark.parametrize("folder", ["images_distractor", "images"])
def test_market_500k_adds_the_distractor_folder_to_the_gallery(tmp_path, folder):
    base = market_folder(tmp_path, folder)
    plain = DATASET_REGISTRY.get("Market1501")(tmp_path)
    extended = DATASET_REGISTRY.get("Market1501_500k")(tmp_path)
    added = [(str(base / folder / "0000_c1s9_000001_01.jpg"), 0, 0),
             (str(base / folder / "0000_c6s3_999999_00.jpg"), 0, 5)]  # junk (-1) dropped
    assert extended.gallery == plain.gallery + added
    assert extended.query == plain.query and extended.train == plain.train


def test_market_500k_without_the_folder_says_where(tmp_path):
    market_folder(tmp_path, None)
    with pytest.raises(ReidError, match="no distractor folder .*images_distractor .*FastReID's"):
        DATASET_REGISTRY.get("Market1501_500k")(tmp_path)


def test_synthetic_distractors_are_appended_deterministically(tmp_path):
    generate_synthetic_market(tmp_path / "a", num_train_ids=2, num_test_ids=2, num_cameras=2,
                              images_per_id=4, num_distractors=1, num_junk=0, size=(32, 16))
    base = tmp_path / "a" / "SyntheticMarket1501"
    folder = append_distractors(base, 7)
    assert folder == base / MARKET_DIR / DISTRACTOR_DIR
    plain = DATASET_REGISTRY.get("SyntheticMarket1501")(tmp_path / "a")
    extended = DATASET_REGISTRY.get("SyntheticMarket1501_500k")(tmp_path / "a")
    added = extended.gallery[len(plain.gallery):]
    assert extended.gallery[:len(plain.gallery)] == plain.gallery and len(added) == 7
    assert {pid for _, pid, _ in added} == {0} and {cam for _, _, cam in added} <= {0, 1}
    first = {Path(p).name: Path(p).read_bytes() for p, _, _ in added}
    append_distractors(base, 3)  # fewer: the same first images, the folder replaced
    again = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(again) == 3 and all(first[name] == data for name, data in again.items())
    with pytest.raises(ReidError, match="not a generated synthetic set"):
        append_distractors(tmp_path, 3)
