"""Market-1501 reading: layouts, junk / distractors, 0-based cameras, one-line errors."""
from pathlib import Path

import pytest
from PIL import Image

from reid.data.datasets import (DATASET_REGISTRY, Market1501, SyntheticMarket1501,
                                parse_market_name)
from reid.errors import ReidError

TREE = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                           "0007_c6s3_012345_02.jpg"],
    "query": ["0005_c1s1_001051_00.jpg", "0005_c3s2_002051_00.jpg"],
    "bounding_box_test": ["0005_c2s1_001151_01.jpg", "0000_c1s1_000001_01.jpg",
                          "-1_c4s1_000401_03.jpg", "0005_c5s3_045678_04.jpg"],
}


def make_tree(base: Path, tree: dict = TREE) -> Path:
    for split, names in tree.items():
        (base / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.new("RGB", (4, 8), (10, 20, 30)).save(base / split / name)
    return base


def rel(records, base: Path):
    return [(str(Path(p).relative_to(base)), pid, cam) for p, pid, cam in records]


@pytest.mark.parametrize("layout", ["Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15",
                                    "market1501"])
def test_market_reads_every_accepted_layout(tmp_path, layout):
    base = make_tree(tmp_path / layout)
    ds = Market1501(tmp_path)
    assert rel(ds.train, base) == [
        ("bounding_box_train/0002_c1s1_000451_03.jpg", 2, 0),
        ("bounding_box_train/0002_c2s1_000551_01.jpg", 2, 1),
        ("bounding_box_train/0007_c6s3_012345_02.jpg", 7, 5),
    ]
    assert rel(ds.query, base) == [("query/0005_c1s1_001051_00.jpg", 5, 0),
                                   ("query/0005_c3s2_002051_00.jpg", 5, 2)]
    # junk (-1) dropped, distractor (0) kept, sorted by file name
    assert rel(ds.gallery, base) == [
        ("bounding_box_test/0000_c1s1_000001_01.jpg", 0, 0),
        ("bounding_box_test/0005_c2s1_001151_01.jpg", 5, 1),
        ("bounding_box_test/0005_c5s3_045678_04.jpg", 5, 4),
    ]
    assert all(Path(p).is_file() for p, _, _ in ds.train + ds.query + ds.gallery)


def test_summary_counts_and_combined_train(tmp_path):
    make_tree(tmp_path / "Market-1501-v15.09.15")
    ds = Market1501(tmp_path)
    rows = {line.split("|")[0].strip(): [int(x) for x in line.split("|")[1:]]
            for line in ds.summary().splitlines() if line.split("|")[0].strip() in
            ("train", "query", "gallery")}
    assert rows == {"train": [2, 3, 3], "query": [1, 2, 2], "gallery": [2, 3, 3]}
    # COMBINEALL adds query + gallery identities but not the distractor pid 0
    assert sorted({pid for _, pid, _ in ds.combined_train()}) == [2, 5, 7]
    assert len(ds.combined_train()) == 3 + 2 + 2


def test_registry_builds_by_name(tmp_path):
    assert DATASET_REGISTRY.get("Market1501") is Market1501
    assert DATASET_REGISTRY.get("SyntheticMarket1501") is SyntheticMarket1501
    make_tree(tmp_path / "SyntheticMarket1501" / "Market-1501-v15.09.15")
    assert len(DATASET_REGISTRY.get("SyntheticMarket1501")(tmp_path).train) == 3


def test_missing_market_shows_expected_layout(tmp_path):
    with pytest.raises(ReidError) as err:
        Market1501(tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"dataset Market1501 not found under {tmp_path / 'data'}: expected "
                          f"{tmp_path / 'data' / 'Market-1501-v15.09.15'}/"
                          "{bounding_box_train,query,bounding_box_test}/*.jpg")


def test_missing_synthetic_says_to_run_prepare(tmp_path):
    with pytest.raises(ReidError, match=r"SyntheticMarket1501 not found .*reid prepare") as err:
        SyntheticMarket1501(tmp_path)
    assert "\n" not in str(err.value)


def test_missing_split_folder_names_it(tmp_path):
    base = make_tree(tmp_path / "Market-1501-v15.09.15",
                     {k: v for k, v in TREE.items() if k != "query"})
    with pytest.raises(ReidError, match="missing dataset folder") as err:
        Market1501(tmp_path)
    assert str(base / "query") in str(err.value)


def test_layout_is_checked_before_contents(tmp_path):
    base = tmp_path / "Market-1501-v15.09.15"
    for split in ("bounding_box_train", "query"):  # empty, and bounding_box_test is missing
        (base / split).mkdir(parents=True)
    with pytest.raises(ReidError) as err:
        Market1501(tmp_path)
    assert str(err.value) == (f"missing dataset folder {base / 'bounding_box_test'} (expected a "
                              "folder of PPPP_cCsS_FFFFFF_NN.jpg images each)")


def test_split_without_images_names_it(tmp_path):
    base = make_tree(tmp_path / "Market-1501-v15.09.15")
    for f in (base / "query").iterdir():
        f.unlink()
    (base / "query" / "Thumbs.db").write_bytes(b"x")  # non-jpg files are ignored
    with pytest.raises(ReidError, match=f"no images in {base / 'query'}"):
        Market1501(tmp_path)


@pytest.mark.parametrize("bad", ["0002_c1_000451_03.jpg", "abc.jpg", "0002_c0s1_000451_03.jpg",
                                 "-2_c1s1_000451_03.jpg"])
def test_unparseable_file_name_is_named(tmp_path, bad):
    base = make_tree(tmp_path / "Market-1501-v15.09.15")
    Image.new("RGB", (4, 8)).save(base / "bounding_box_test" / bad)
    with pytest.raises(ReidError) as err:
        Market1501(tmp_path)
    msg = str(err.value)
    assert str(base / "bounding_box_test" / bad) in msg and "PPPP_cCsS_FFFFFF_NN.jpg" in msg
    assert "\n" not in msg


def test_parse_market_name():
    assert parse_market_name("/x/1501_c6s4_001877_02.jpg") == (1501, 5)
    assert parse_market_name("-1_c1s1_000401_03.jpg") == (-1, 0)
    assert parse_market_name("0000_c2s1_000001_01.jpg") == (0, 1)
