"""Dataset readers: Market-1501 (layouts, junk / distractors, 0-based cameras, one-line errors);
DukeMTMC, CUHK03, VeRi, MSMT17, VehicleID from fake release trees -> parsed records."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reid.config import load_config
from reid.data.build import relabel
from reid.data.datasets import (CUHK03, DATASET_REGISTRY, MSMT17, CUHK03Labeled, DukeMTMC,
                                LargeVehicleID, Market1501, MediumVehicleID, SmallVehicleID,
                                SyntheticMarket1501, VehicleID, VeRi, parse_market_name)
from reid.errors import ReidError
from reid.evaluation.evaluator import Evaluator

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


# -------------------------------------------------------------- other datasets: fake release trees

def touch_tree(base: Path, tree: dict[str, list[str]]) -> Path:
    """Empty files are enough: datasets parse names, images are read by the loaders."""
    for folder, names in tree.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (base / folder / name).write_bytes(b"")
    return base


def one_line_error(fn, *args) -> str:
    with pytest.raises(ReidError) as err:
        fn(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------- DukeMTMC
DUKE = {
    "bounding_box_train": ["0007_c1_f0000001.jpg", "0001_c5_f0051341.jpg",
                           "0001_c2_f0046182.jpg"],
    "query": ["0005_c1_f0000100.jpg"],
    "bounding_box_test": ["0099_c8_f0000300.jpg", "0005_c3_f0000200.jpg", "readme.txt"],
}


def test_duke_records_cameras_and_no_junk(tmp_path):
    base = touch_tree(tmp_path / "DukeMTMC-reID", DUKE)
    ds = DATASET_REGISTRY.get("DukeMTMC")(tmp_path)
    assert isinstance(ds, DukeMTMC)
    assert rel(ds.train, base) == [("bounding_box_train/0001_c2_f0046182.jpg", 1, 1),
                                   ("bounding_box_train/0001_c5_f0051341.jpg", 1, 4),
                                   ("bounding_box_train/0007_c1_f0000001.jpg", 7, 0)]
    assert rel(ds.query, base) == [("query/0005_c1_f0000100.jpg", 5, 0)]
    assert rel(ds.gallery, base) == [("bounding_box_test/0005_c3_f0000200.jpg", 5, 2),
                                     ("bounding_box_test/0099_c8_f0000300.jpg", 99, 7)]
    # Duke's gallery-only identities are real people: COMBINEALL keeps them
    assert sorted({pid for _, pid, _ in ds.combined_train()}) == [1, 5, 7, 99]
    # the loader relabels training pids contiguously in pid order
    labels, count = relabel([("DukeMTMC", ds.train)])
    assert count == 2 and [label for _, label, _ in labels] == [0, 0, 1]
    assert ds.eval_protocol == "market"


def test_duke_errors(tmp_path):
    message = one_line_error(DukeMTMC, tmp_path)
    assert message.startswith(f"dataset DukeMTMC not found under {tmp_path}: expected "
                              f"{tmp_path / 'DukeMTMC-reID'}/{{bounding_box_train,query,"
                              "bounding_box_test}/PPPP_cC_fFFFFFFF.jpg")
    touch_tree(tmp_path / "DukeMTMC-reID", {"query": DUKE["query"]})
    message = one_line_error(DukeMTMC, tmp_path)
    assert message.startswith("missing dataset folders "
                              f"{tmp_path / 'DukeMTMC-reID' / 'bounding_box_train'}, ")
    tree = {**DUKE, "query": ["0002_c1s1_000451_03.jpg"]}  # a Market name
    touch_tree(tmp_path / "other" / "DukeMTMC-reID", tree)
    message = one_line_error(DukeMTMC, tmp_path / "other")
    assert "cannot parse image name" in message and "0002_c1s1_000451_03.jpg" in message


# --------------------------------------------------------------------------- CUHK03
CUHK = {
    "bounding_box_train": ["0003_c2_5.png", "0003_c1_1.png", "0010_c1_2.png"],
    "query": ["0500_c1_1.png"],
    "bounding_box_test": ["0500_c2_6.png", "0501_c1_3.png", "0501_c2_7.jpg", "-1_c1_1.png"],
}


@pytest.mark.parametrize("layout, cls", [("cuhk03", CUHK03), ("cuhk03-np/detected", CUHK03),
                                         ("cuhk03-np/labeled", CUHK03Labeled)])
def test_cuhk03_layouts(tmp_path, layout, cls):
    base = touch_tree(tmp_path / layout, CUHK)
    ds = cls(tmp_path)
    assert rel(ds.train, base) == [("bounding_box_train/0003_c1_1.png", 3, 0),
                                   ("bounding_box_train/0003_c2_5.png", 3, 1),
                                   ("bounding_box_train/0010_c1_2.png", 10, 0)]
    assert rel(ds.query, base) == [("query/0500_c1_1.png", 500, 0)]
    # junk (-1) dropped; .png and .jpg both read
    assert rel(ds.gallery, base) == [("bounding_box_test/0500_c2_6.png", 500, 1),
                                     ("bounding_box_test/0501_c1_3.png", 501, 0),
                                     ("bounding_box_test/0501_c2_7.jpg", 501, 1)]


def test_cuhk03_is_evaluated_with_its_protocol_unless_test_protocol_says_otherwise():
    assert Evaluator(load_config()).protocol_of("CUHK03") == "cuhk03"
    assert Evaluator(load_config()).protocol_of("CUHK03Labeled") == "cuhk03"
    assert Evaluator(load_config()).protocol_of("DukeMTMC") == "market"
    assert Evaluator(load_config(None, ["TEST.PROTOCOL", "market"])).protocol_of("CUHK03") \
        == "market"


# --------------------------------------------------------------------------- VeRi
VERI = {
    "image_train": ["0002_c002_00030600_0.jpg", "0776_c020_00000001_3.jpg",
                    "0002_c003_00030610_1.jpg"],
    "image_query": ["0005_c001_00012345_0.jpg"],
    "image_test": ["0005_c004_00012399_1.jpg", "0006_c011_00000002_0.jpg"],
}


@pytest.mark.parametrize("folder", ["veri", "VeRi"])
def test_veri_records(tmp_path, folder):
    base = touch_tree(tmp_path / folder, VERI)
    ds = VeRi(tmp_path)
    assert rel(ds.train, base) == [("image_train/0002_c002_00030600_0.jpg", 2, 1),
                                   ("image_train/0002_c003_00030610_1.jpg", 2, 2),
                                   ("image_train/0776_c020_00000001_3.jpg", 776, 19)]
    assert rel(ds.query, base) == [("image_query/0005_c001_00012345_0.jpg", 5, 0)]
    assert rel(ds.gallery, base) == [("image_test/0005_c004_00012399_1.jpg", 5, 3),
                                     ("image_test/0006_c011_00000002_0.jpg", 6, 10)]


def test_veri_missing_names_the_layout(tmp_path):
    assert one_line_error(VeRi, tmp_path) == (
        f"dataset VeRi not found under {tmp_path}: expected {tmp_path / 'veri'}/"
        "{image_train,image_query,image_test}/VVVV_cCCC_FFFFFFFF_N.jpg "
        f"(also accepted: {tmp_path / 'VeRi'})")


# --------------------------------------------------------------------------- MSMT17
MSMT_LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                       "0000/0000_001_05_0303morning_0016_0.jpg 0",
                       "0001/0001_000_15_0303noon_0001_0.jpg 1"],
    "list_val.txt": ["0001/0001_002_03_0303noon_0002_0.jpg 1"],
    "list_query.txt": ["0000/0000_000_02_0303afternoon_0001_0.jpg 0"],
    "list_gallery.txt": ["0000/0000_001_07_0303afternoon_0002_0.jpg 0", "",
                         "0003/0003_000_01_0303afternoon_0003_0.jpg 3"],
}


def make_msmt(base: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    for folder in (train_dir, test_dir):
        (base / folder).mkdir(parents=True)
    for name, lines in MSMT_LISTS.items():
        (base / name).write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("release, train_dir, test_dir", [
    ("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    ("msmt17/MSMT17_V1", "train", "test")])
def test_msmt17_lists_cameras_and_shifted_test_pids(tmp_path, release, train_dir, test_dir):
    base = make_msmt(tmp_path / release, train_dir, test_dir)
    ds = MSMT17(tmp_path)
    t = train_dir
    assert rel(ds.train, base) == [(f"{t}/0000/0000_000_01_0303morning_0015_0.jpg", 0, 0),
                                   (f"{t}/0000/0000_001_05_0303morning_0016_0.jpg", 0, 4),
                                   (f"{t}/0001/0001_000_15_0303noon_0001_0.jpg", 1, 14)]
    assert rel(ds.val, base) == [(f"{t}/0001/0001_002_03_0303noon_0002_0.jpg", 1, 2)]
    # test pids restart at 0 in the lists; they are shifted past the 2 training identities
    t = test_dir
    assert rel(ds.query, base) == [(f"{t}/0000/0000_000_02_0303afternoon_0001_0.jpg", 2, 1)]
    assert rel(ds.gallery, base) == [(f"{t}/0000/0000_001_07_0303afternoon_0002_0.jpg", 2, 6),
                                     (f"{t}/0003/0003_000_01_0303afternoon_0003_0.jpg", 5, 0)]
    # COMBINEALL: train + val + test images, test people not merged with training people
    combined = ds.combined_train()
    assert len(combined) == 3 + 1 + 1 + 2
    assert relabel([("MSMT17", combined)])[1] == 4
    assert relabel([("MSMT17", ds.train)])[1] == 2  # val is not training data by default


def test_msmt17_errors(tmp_path):
    message = one_line_error(MSMT17, tmp_path)
    assert message.startswith(f"dataset MSMT17 not found under {tmp_path}: expected "
                              f"{tmp_path / 'MSMT17_V1'}/{{train,test,list_train.txt,")
    base = make_msmt(tmp_path / "MSMT17_V1")
    (base / "list_query.txt").write_text("0000/0000_000_02_x_0001_0.jpg\n")
    assert one_line_error(MSMT17, tmp_path) == (
        f"cannot parse line 1 of {base / 'list_query.txt'}: '0000/0000_000_02_x_0001_0.jpg' "
        "(expected 'PPPP/PPPP_SSS_CC_....jpg PID')")
    (base / "list_val.txt").unlink()
    assert one_line_error(MSMT17, tmp_path).startswith(
        f"missing list file {base / 'list_val.txt'}")


# --------------------------------------------------------------------------- VehicleID
TRAIN_LIST = ["0000001 0001", "0000002 0001", "0000010 0002"]
# vehicle 10 has three images, 11 one, 12 two
TEST_800 = ["0000100 0010", "0000101 0011", "0000102 0010", "0000103 0012", "0000104 0010",
            "0000105 0012"]


def make_vehicleid(base: Path, lists: dict[str, list[str]]) -> Path:
    (base / "image").mkdir(parents=True)
    (base / "train_test_split").mkdir()
    for name, lines in {"train_list.txt": TRAIN_LIST, **lists}.items():
        (base / "train_test_split" / name).write_text("\n".join(lines) + "\n")
    return base


def test_vehicleid_one_gallery_image_per_vehicle(tmp_path):
    base = make_vehicleid(tmp_path / "vehicleid", {"test_list_800.txt": TEST_800})
    ds = DATASET_REGISTRY.get("SmallVehicleID")(tmp_path)
    # no cameras: each image's id is its camera, so only the query itself is excluded
    assert rel(ds.train, base) == [("image/0000001.jpg", 1, 1), ("image/0000002.jpg", 1, 2),
                                   ("image/0000010.jpg", 2, 10)]
    everything = rel(ds.query + ds.gallery, base)
    assert sorted(everything) == sorted((f"image/{i}.jpg", int(v), int(i))
                                        for i, v in (line.split() for line in TEST_800))
    assert sorted(pid for _, pid, _ in ds.gallery) == [10, 11, 12]  # one image per vehicle
    assert 11 not in {pid for _, pid, _ in ds.query}  # a single image goes to the gallery
    # both lists keep the list file's order
    order = [line.split()[0] for line in TEST_800]
    for split in (ds.query, ds.gallery):
        ids = [Path(p).stem for p, _, _ in split]
        assert ids == sorted(ids, key=order.index)
    # seeded: the same split every time
    assert SmallVehicleID(tmp_path).gallery == ds.gallery


def test_vehicleid_gallery_pick_is_random_over_seeds(tmp_path):
    make_vehicleid(tmp_path / "VehicleID_V1.0", {"test_list_800.txt": TEST_800})
    picks = set()
    for seed in range(20):
        seeded = type("Seeded", (SmallVehicleID,), {"gallery_seed": seed})
        picks |= {Path(p).stem for p, pid, _ in seeded(tmp_path).gallery if pid == 10}
    assert picks == {"0000100", "0000102", "0000104"}


def test_vehicleid_test_lists_by_name(tmp_path):
    lists = {"test_list_800.txt": TEST_800[:2], "test_list_1600.txt": TEST_800[:3],
             "test_list_2400.txt": TEST_800[:4], "test_list_13164.txt": TEST_800}
    make_vehicleid(tmp_path / "vehicleid", lists)
    sizes = {cls.__name__: len(cls(tmp_path).query + cls(tmp_path).gallery)
             for cls in (SmallVehicleID, MediumVehicleID, LargeVehicleID, VehicleID)}
    assert sizes == {"SmallVehicleID": 2, "MediumVehicleID": 3, "LargeVehicleID": 4,
                     "VehicleID": 6}


def test_vehicleid_errors(tmp_path):
    message = one_line_error(LargeVehicleID, tmp_path)
    assert message == (f"dataset LargeVehicleID not found under {tmp_path}: expected "
                       f"{tmp_path / 'vehicleid'}/{{image/*.jpg,train_test_split/"
                       "{train_list.txt,test_list_2400.txt}} (also accepted: "
                       f"{tmp_path / 'VehicleID_V1.0'})")
    base = make_vehicleid(tmp_path / "vehicleid", {"test_list_800.txt": TEST_800})
    assert one_line_error(LargeVehicleID, tmp_path).startswith(
        f"missing list file {base / 'train_test_split' / 'test_list_2400.txt'} "
        "(expected lines 'IMGID VID')")
