"""FastReID's other datasets on fake release trees: the training-only person sets (people and
cameras numbered in natural order from the release's labels, hand-numbered below) and
VERI-Wild with its three test sizes; one-line errors for missing or malformed releases."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reid.config import load_config
from reid.data.build import build_test_loader, relabel
from reid.data.datasets import DATASET_REGISTRY
from reid.errors import ReidError


def write_images(root: Path, paths) -> None:
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 8), (40, 80, 120)).save(path)


# name -> (files of the release, expected (file, pid, camid) sorted by path, in a hand
# numbering of the release's person / camera labels in natural order). Files that the
# release holds but the reader must leave out are listed as well.
CASES = {
    "CAVIARa": (["CAVIARa/0001001.jpg", "CAVIARa/0001002.jpg", "CAVIARa/0012001.jpg"],
                [("CAVIARa/0001001.jpg", 0, 0), ("CAVIARa/0001002.jpg", 0, 0),
                 ("CAVIARa/0012001.jpg", 1, 0)]),
    "cuhkSYSU": (["cuhk_sysu/cropped_images/p10_s15.jpg", "cuhk_sysu/cropped_images/p10_s2.jpg",
                  "cuhk_sysu/cropped_images/p3_s1.jpg"],
                 [("cuhk_sysu/cropped_images/p10_s15.jpg", 1, 0),
                  ("cuhk_sysu/cropped_images/p10_s2.jpg", 1, 0),
                  ("cuhk_sysu/cropped_images/p3_s1.jpg", 0, 0)]),
    # 0000 = unpaired gallery people: left out
    "GRID": (["underground_reid/images/0001_1_25004_107_32_130_290.jpeg",
              "underground_reid/images/0001_5_25034_212_40_116_276.jpeg",
              "underground_reid/images/0000_3_25004_300_32_130_290.jpeg",
              "underground_reid/images/0002_2_25100_107_32_130_290.jpeg"],
             [("underground_reid/images/0001_1_25004_107_32_130_290.jpeg", 0, 0),
              ("underground_reid/images/0001_5_25034_212_40_116_276.jpeg", 0, 2),
              ("underground_reid/images/0002_2_25100_107_32_130_290.jpeg", 1, 1)]),
    "PKU": (["PKUv1a_128x48/0001_0_0001.png", "PKUv1a_128x48/0001_1_0002.png",
             "PKUv1a_128x48/0002_0_0001.png"],
            [("PKUv1a_128x48/0001_0_0001.png", 0, 0), ("PKUv1a_128x48/0001_1_0002.png", 0, 1),
             ("PKUv1a_128x48/0002_0_0001.png", 1, 0)]),
    "PRAI": (["PRAI-1581/images/00001_08_0001.jpg", "PRAI-1581/images/00001_11_0003.jpg",
              "PRAI-1581/images/00003_08_0002.jpg"],
             [("PRAI-1581/images/00001_08_0001.jpg", 0, 0),
              ("PRAI-1581/images/00001_11_0003.jpg", 0, 1),
              ("PRAI-1581/images/00003_08_0002.jpg", 1, 0)]),
    "Shinpuhkan": (["shinpuhkan/images/001/001_R_03_0001.jpg",
                    "shinpuhkan/images/001/001_R_16_0002.jpg",
                    "shinpuhkan/images/002/002_L_03_0001.jpg"],
                   [("shinpuhkan/images/001/001_R_03_0001.jpg", 0, 0),
                    ("shinpuhkan/images/001/001_R_16_0002.jpg", 0, 1),
                    ("shinpuhkan/images/002/002_L_03_0001.jpg", 1, 0)]),
    "SenseReID": (["SenseReID/test_gallery/0000001_0.jpg", "SenseReID/test_prob/0000001_1.jpg",
                   "SenseReID/test_gallery/0000002_0.jpg"],
                  [("SenseReID/test_gallery/0000001_0.jpg", 0, 0),
                   ("SenseReID/test_gallery/0000002_0.jpg", 1, 0),
                   ("SenseReID/test_prob/0000001_1.jpg", 0, 1)]),
    "VIPeR": (["VIPeR/cam_a/000_45.bmp", "VIPeR/cam_b/000_90.bmp", "VIPeR/cam_a/001_0.bmp"],
              [("VIPeR/cam_a/000_45.bmp", 0, 0), ("VIPeR/cam_a/001_0.bmp", 1, 0),
               ("VIPeR/cam_b/000_90.bmp", 0, 1)]),
    "iLIDS": (["iLIDS/0001/cam1_1.png", "iLIDS/0001/cam2_1.png", "iLIDS/0002/cam1_1.png"],
              [("iLIDS/0001/cam1_1.png", 0, 0), ("iLIDS/0001/cam2_1.png", 0, 1),
               ("iLIDS/0002/cam1_1.png", 1, 0)]),
    # person folders 1, 2, 10: numbered 0, 1, 2 although "10" sorts before "2" as text
    "PeS3D": (["3DPeS/1/a.bmp", "3DPeS/10/b.bmp", "3DPeS/2/c.bmp"],
              [("3DPeS/1/a.bmp", 0, 0), ("3DPeS/10/b.bmp", 2, 0), ("3DPeS/2/c.bmp", 1, 0)]),
    "Thermalworld": (["thermalworld_rgb/0001/x.jpg", "thermalworld_rgb/0002/y.jpg"],
                     [("thermalworld_rgb/0001/x.jpg", 0, 0),
                      ("thermalworld_rgb/0002/y.jpg", 1, 0)]),
    "WildTrackCrop": (["Wildtrack_crop_dataset/crop/0001/C1_0.png",
                       "Wildtrack_crop_dataset/crop/0001/C7_5.png",
                       "Wildtrack_crop_dataset/crop/0002/C1_5.png"],
                      [("Wildtrack_crop_dataset/crop/0001/C1_0.png", 0, 0),
                       ("Wildtrack_crop_dataset/crop/0001/C7_5.png", 0, 1),
                       ("Wildtrack_crop_dataset/crop/0002/C1_5.png", 1, 0)]),
    "SAIVT": (["SAIVT-SoftBio/cropped_images/P1/P1-S1-C3-0001.jpeg",
               "SAIVT-SoftBio/cropped_images/P1/P1-S1-C8-0002.jpeg",
               "SAIVT-SoftBio/cropped_images/P2/P2-S1-C3-0001.jpeg"],
              [("SAIVT-SoftBio/cropped_images/P1/P1-S1-C3-0001.jpeg", 0, 0),
               ("SAIVT-SoftBio/cropped_images/P1/P1-S1-C8-0002.jpeg", 0, 1),
               ("SAIVT-SoftBio/cropped_images/P2/P2-S1-C3-0001.jpeg", 1, 0)]),
    # cam3 is infrared: left out
    "SYSU_mm": (["SYSU-MM01/cam1/0001/0001.jpg", "SYSU-MM01/cam2/0001/0001.jpg",
                 "SYSU-MM01/cam3/0001/0001.jpg", "SYSU-MM01/cam4/0002/0001.jpg",
                 "SYSU-MM01/cam5/0002/0002.jpg"],
                [("SYSU-MM01/cam1/0001/0001.jpg", 0, 0), ("SYSU-MM01/cam2/0001/0001.jpg", 0, 1),
                 ("SYSU-MM01/cam4/0002/0001.jpg", 1, 2),
                 ("SYSU-MM01/cam5/0002/0002.jpg", 1, 3)]),
    # person 1 of scene 1 and person 1 of scene 2 are different people
    "LPW": (["pep_256x128/scen1/view1/1/a.jpg", "pep_256x128/scen1/view2/1/b.jpg",
             "pep_256x128/scen2/view1/1/c.jpg", "pep_256x128/scen3/view1/2/d.jpg"],
            [("pep_256x128/scen1/view1/1/a.jpg", 0, 0), ("pep_256x128/scen1/view2/1/b.jpg", 0, 1),
             ("pep_256x128/scen2/view1/1/c.jpg", 1, 0),
             ("pep_256x128/scen3/view1/2/d.jpg", 2, 0)]),
    "PRID": (["prid_2011/slim_train/person_0001/a_0001.png",
              "prid_2011/slim_train/person_0001/b_0002.png",
              "prid_2011/slim_train/person_0002/a_0001.png"],
             [("prid_2011/slim_train/person_0001/a_0001.png", 0, 0),
              ("prid_2011/slim_train/person_0001/b_0002.png", 0, 1),
              ("prid_2011/slim_train/person_0002/a_0001.png", 1, 0)]),
}


def airport_release(root: Path) -> list[tuple[str, int, int]]:
    """AirportALERT: a list file with Windows paths; persons outside 11001..401999 unused."""
    lines = ["cam5\\11005\\img1.jpg", "cam12\\11005\\img2.jpg", "cam5\\500000\\img3.jpg",
             "cam5\\20001\\img4.jpg", ""]
    write_images(root / "AirportALERT", [line.replace("\\", "/") for line in lines if line])
    (root / "AirportALERT" / "filepath.txt").write_text("\n".join(lines))
    # cameras cam5 < cam12 in natural order; persons 11005, 20001
    return [("AirportALERT/cam12/11005/img2.jpg", 0, 1), ("AirportALERT/cam5/11005/img1.jpg", 0, 0),
            ("AirportALERT/cam5/20001/img4.jpg", 1, 0)]


def relative(records, root: Path):
    return [(Path(p).relative_to(root).as_posix(), pid, cam) for p, pid, cam in records]


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_only_set_reads_its_release_layout(tmp_path, name):
    files, expected = CASES[name]
    write_images(tmp_path, files)
    dataset = DATASET_REGISTRY.get(name)(tmp_path)
    assert relative(dataset.train, tmp_path) == expected
    assert dataset.query == [] and dataset.gallery == []
    # the release's own labels are kept, one per number
    assert len(dataset.pid_names) == len({pid for _, pid, _ in expected})
    assert len(dataset.camera_names) == len({cam for _, _, cam in expected})


def test_airport_alert_reads_its_list_file(tmp_path):
    expected = airport_release(tmp_path)
    dataset = DATASET_REGISTRY.get("AirportALERT")(tmp_path)
    assert relative(dataset.train, tmp_path) == expected
    assert dataset.pid_names == ["11005", "20001"]
    assert dataset.camera_names == ["cam5", "cam12"]


def test_airport_alert_malformed_line_is_named(tmp_path):
    (tmp_path / "AirportALERT").mkdir()
    (tmp_path / "AirportALERT" / "filepath.txt").write_text("cam5\\11005\\a.jpg\njunk\n")
    with pytest.raises(ReidError, match=r"line 2 of .*filepath.txt: 'junk'"):
        DATASET_REGISTRY.get("AirportALERT")(tmp_path)


@pytest.mark.parametrize("alias, name", [("CAVIAR", "CAVIARa"), ("CUHKSYSU", "cuhkSYSU"),
                                         ("SYSU-MM01", "SYSU_mm"), ("3DPeS", "PeS3D")])
def test_usual_spellings_are_aliases_of_fastreid_names(alias, name):
    assert DATASET_REGISTRY.get(alias) is DATASET_REGISTRY.get(name)


def test_missing_release_names_the_expected_layout(tmp_path):
    with pytest.raises(ReidError) as err:
        DATASET_REGISTRY.get("VIPeR")(tmp_path)
    assert str(err.value) == (f"dataset VIPeR not found under {tmp_path}: expected "
                              f"{tmp_path / 'VIPeR'}/{{cam_a,cam_b}}/PPP_AAA.bmp")
    write_images(tmp_path, ["SenseReID/test_gallery/0000001_0.jpg"])
    with pytest.raises(ReidError, match=r"missing folder .*test_prob: dataset SenseReID expects"):
        DATASET_REGISTRY.get("SenseReID")(tmp_path)
    (tmp_path / "3DPeS").mkdir()
    with pytest.raises(ReidError, match=r"no images in .*3DPeS \(expected .*<pid>/\*.bmp\)"):
        DATASET_REGISTRY.get("PeS3D")(tmp_path)


def test_unparseable_name_is_named(tmp_path):
    write_images(tmp_path, ["PKUv1a_128x48/0001.png"])
    with pytest.raises(ReidError, match=r"cannot parse image name .*0001.png \(expected "
                                        r"PPPP_C_....png\)"):
        DATASET_REGISTRY.get("PKU")(tmp_path)


def test_training_only_sets_keep_their_people_apart_and_cannot_be_tested(tmp_path):
    for name in ("VIPeR", "PKU"):
        write_images(tmp_path, CASES[name][0])
    viper, pku = (DATASET_REGISTRY.get(n)(tmp_path) for n in ("VIPeR", "PKU"))
    records, classes = relabel([("VIPeR", viper.train), ("PKU", pku.train)])
    assert classes == 2 + 2  # VIPeR's person 0 is not PKU's person 0
    cfg = load_config(None, ["DATASETS.ROOT", str(tmp_path)])
    with pytest.raises(ReidError, match="VIPeR has no query / gallery split .* not DATASETS.TESTS"):
        build_test_loader(cfg, "VIPeR")


# ---------------------------------------------------------------------------- VERI-Wild
def veriwild_release(root: Path) -> Path:
    base = root / "VERI-Wild"
    images = {"00001": ["000001", "000002"], "00002": ["000003", "000004", "000005"],
              "00007": ["000006", "000007"]}
    write_images(base / "images", [f"{vid}/{img}.jpg" for vid, imgs in images.items()
                                   for img in imgs])
    cameras = {"000001": 3, "000002": 17, "000003": 3, "000004": 5, "000005": 17,
               "000006": 1, "000007": 2}
    split = base / "train_test_split"
    split.mkdir()
    info = ["id/image;Camera ID;Time;Model;Type;Color"]
    info += [f"{vid}/{img};{cameras[img]};2018-03-11 11:40:09;Audi A4L;SUV;white"
             for vid, imgs in images.items() for img in imgs]
    (split / "vehicle_info.txt").write_text("\n".join(info) + "\n")
    (split / "train_list.txt").write_text("00001/000001\n00001/000002\n")
    for size, query, gallery in ((3000, ["00002/000003"], ["00002/000004"]),
                                 (5000, ["00002/000004"], ["00002/000003", "00002/000005"]),
                                 (10000, ["00007/000006"], ["00007/000007", "00002/000005"])):
        (split / f"test_{size}_query.txt").write_text("\n".join(query) + "\n")
        (split / f"test_{size}.txt").write_text("\n".join(gallery) + "\n")
    return base / "images"


@pytest.mark.parametrize("name, query, gallery", [
    ("SmallVeRiWild", [("00002/000003", 2, 3)], [("00002/000004", 2, 5)]),
    ("MediumVeRiWild", [("00002/000004", 2, 5)], [("00002/000003", 2, 3), ("00002/000005", 2, 17)]),
    ("LargeVeRiWild", [("00007/000006", 7, 1)], [("00007/000007", 7, 2), ("00002/000005", 2, 17)]),
    ("VeRiWild", [("00007/000006", 7, 1)], [("00007/000007", 7, 2), ("00002/000005", 2, 17)]),
])
def test_veriwild_test_sizes(tmp_path, name, query, gallery):
    images = veriwild_release(tmp_path)
    dataset = DATASET_REGISTRY.get(name)(tmp_path)

    def expect(rows):
        return [(str(images / f"{key}.jpg"), vid, cam) for key, vid, cam in rows]

    assert dataset.train == expect([("00001/000001", 1, 3), ("00001/000002", 1, 17)])
    assert dataset.query == expect(query)
    assert dataset.gallery == expect(gallery)


def test_veriwild_errors(tmp_path):
    with pytest.raises(ReidError, match=r"dataset VeRiWild not found under .*VERI-Wild/"):
        DATASET_REGISTRY.get("VeRiWild")(tmp_path)
    veriwild_release(tmp_path)
    split = tmp_path / "VERI-Wild" / "train_test_split"
    (split / "train_list.txt").write_text("00001/000001\n00009/000099\n")
    with pytest.raises(ReidError, match=r"image 00009/000099 of .*train_list.txt is not in"):
        DATASET_REGISTRY.get("VeRiWild")(tmp_path)
    (split / "train_list.txt").write_text("00001/000001\n")
    (split / "test_3000.txt").unlink()
    with pytest.raises(ReidError, match=r"missing VERI-Wild list .*test_3000.txt"):
        DATASET_REGISTRY.get("SmallVeRiWild")(tmp_path)


def test_a_training_only_set_named_as_a_test_set_is_refused_with_the_config():
    with pytest.raises(ReidError) as err:
        load_config(None, ["DATASETS.TESTS", "('Market1501', 'CAVIAR')"])
    assert str(err.value) == ("config key DATASETS.TESTS must be sets with a query / gallery "
                              "split; CAVIAR is a training-only set (name it in DATASETS.NAMES)"
                              "; got ('Market1501', 'CAVIAR') (command line)")
    load_config(None, ["DATASETS.NAMES", "('Market1501', 'CAVIAR')"])  # fine for training
