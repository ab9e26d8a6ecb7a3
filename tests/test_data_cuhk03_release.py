"""The original CUHK03 release (MATLAB v7.3 cuhk-03.mat + v5 split files) -> CUHK03-NP folders.

The fake release below is written the way MATLAB writes v7.3 files: cell arrays as HDF5
datasets of object references, every array stored transposed (column-major), empty cells as
1-d placeholders.
"""
from __future__ import annotations

import sys
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from reid.data.datasets import CUHK03, CUHK03Labeled
from reid.data.datasets import cuhk03_release
from reid.errors import ReidError

# pair -> people -> {1-based image index: (H, W) of that image}; other cells are empty.
PEOPLE = {
    1: [{1: (6, 4), 2: (5, 3), 6: (6, 4)}, {3: (4, 4), 7: (7, 5), 8: (3, 2)}],
    2: [{1: (5, 5), 9: (6, 3)}],
}
# release file name -> (split key, identity label)
SPLIT = {
    "1_001_1_01.png": ("train_idx", 1), "1_001_1_02.png": ("train_idx", 1),
    "1_001_2_06.png": ("train_idx", 1),
    "1_002_1_03.png": ("query_idx", 2), "1_002_2_07.png": ("gallery_idx", 2),
    "1_002_2_08.png": ("gallery_idx", 2),
    "2_001_1_01.png": ("query_idx", 3), "2_001_2_09.png": ("gallery_idx", 3),
}


def pixels(kind: str, pair: int, person: int, image: int, shape) -> np.ndarray:
    seed = zlib.crc32(f"{kind} {pair} {person} {image}".encode())
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def write_release(folder, kinds=("detected", "labeled"), people=PEOPLE):
    path = folder / "cuhk03_release" / "cuhk-03.mat"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as mat:
        refs = mat.create_group("#refs#")
        for kind in kinds:
            pair_refs = []
            for pair, persons in people.items():
                cells = np.empty((10, len(persons)), dtype=h5py.ref_dtype)  # MATLAB people x 10
                for p, images in enumerate(persons):
                    for i in range(10):
                        shape = images.get(i + 1)
                        data = (pixels(kind, pair, p + 1, i + 1, shape).T if shape
                                else np.zeros(2, dtype=np.uint64))
                        cells[i, p] = refs.create_dataset(f"{kind}{pair}_{p}_{i}", data=data).ref
                pair_refs.append(refs.create_dataset(f"{kind}{pair}", data=cells).ref)
            top = np.empty((1, len(pair_refs)), dtype=h5py.ref_dtype)
            top[0, :] = pair_refs
            mat.create_dataset(kind, data=top)
    return path


def write_split(folder, kind="detected", split=SPLIT):
    names = sorted(split)
    filelist = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        filelist[i, 0] = name
    index = {key: [[i + 1] for i, n in enumerate(names) if split[n][0] == key]
             for key in ("train_idx", "query_idx", "gallery_idx")}
    savemat(folder / f"cuhk03_new_protocol_config_{kind}.mat",
            {"filelist": filelist, "labels": [[split[n][1]] for n in names],
             **{k: np.array(v, dtype=float) for k, v in index.items()}})


@pytest.fixture
def release(tmp_path):
    folder = tmp_path / "cuhk03"
    write_release(folder)
    write_split(folder, "detected")
    write_split(folder, "labeled")
    return tmp_path


def records(dataset, split):
    return [(p.split("/")[-2] + "/" + p.split("/")[-1], pid, cam)
            for p, pid, cam in getattr(dataset, split)]


@pytest.mark.parametrize("cls, kind", [(CUHK03, "detected"), (CUHK03Labeled, "labeled")])
def test_the_release_is_converted_to_cuhk03_np_folders_and_read(release, cls, kind):
    ds = cls(release)
    assert records(ds, "train") == [
        ("bounding_box_train/0001_c1_1_001_1_01.png", 1, 0),
        ("bounding_box_train/0001_c1_1_001_1_02.png", 1, 0),
        ("bounding_box_train/0001_c2_1_001_2_06.png", 1, 1)]
    assert records(ds, "query") == [("query/0002_c1_1_002_1_03.png", 2, 0),
                                    ("query/0003_c1_2_001_1_01.png", 3, 0)]
    assert records(ds, "gallery") == [("bounding_box_test/0002_c2_1_002_2_07.png", 2, 1),
                                      ("bounding_box_test/0002_c2_1_002_2_08.png", 2, 1),
                                      ("bounding_box_test/0003_c2_2_001_2_09.png", 3, 1)]
    # Pixels as stored, the right way up (the release's images are not square).
    base = release / "cuhk03-np" / kind
    for path, (pair, person, image, shape) in {
            "bounding_box_train/0001_c2_1_001_2_06.png": (1, 1, 6, (6, 4)),
            "bounding_box_test/0002_c2_1_002_2_07.png": (1, 2, 7, (7, 5)),
            "query/0003_c1_2_001_1_01.png": (2, 1, 1, (5, 5))}.items():
        np.testing.assert_array_equal(np.asarray(Image.open(base / path)),
                                      pixels(kind, pair, person, image, shape))
    assert not list(release.glob("cuhk03-np/.*"))  # no staging folder left


def test_a_converted_release_is_not_converted_again(release, monkeypatch):
    CUHK03(release)
    monkeypatch.setattr("reid.data.datasets.cuhk03.convert_release",
                        lambda *a: pytest.fail("converted twice"))
    assert len(CUHK03(release).train) == 3


def test_a_release_converted_meanwhile_by_another_process_is_kept(release, monkeypatch):
    """Two DDP ranks may convert at once: the second rename finds the folder in place."""
    target = release / "cuhk03-np" / "detected"
    real = cuhk03_release._write_split_folders

    def other_process_finishes_first(*args):
        written = real(*args)
        (target / "query").mkdir(parents=True)
        (target / "query" / "0001_c1_other.png").write_bytes(b"")
        return written
    monkeypatch.setattr(cuhk03_release, "_write_split_folders", other_process_finishes_first)
    cuhk03_release.convert_release(release / "cuhk03", target, "detected")
    assert [p.name for p in target.rglob("*.png")] == ["0001_c1_other.png"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["detected"]  # staging gone


def test_a_release_without_its_split_file_names_the_file(tmp_path):
    write_release(tmp_path / "cuhk03")
    with pytest.raises(ReidError, match="found the CUHK03 release .*cuhk-03.mat but not its "
                       "split .*cuhk03_new_protocol_config_detected.mat"):
        CUHK03(tmp_path)


def test_a_split_naming_images_the_release_lacks_leaves_nothing_behind(tmp_path):
    write_release(tmp_path / "cuhk03")
    write_split(tmp_path / "cuhk03", split={**SPLIT, "2_001_1_04.png": ("query_idx", 3)})
    with pytest.raises(ReidError, match=r"names 1 images that the release .* does not hold "
                       r"\(first: 2_001_1_04.png\)"):
        CUHK03(tmp_path)
    assert not any((tmp_path / "cuhk03-np").iterdir())  # the staging folder is gone


def test_a_split_index_outside_the_file_list_is_reported(tmp_path):
    folder = tmp_path / "cuhk03"
    write_release(folder)
    savemat(folder / "cuhk03_new_protocol_config_detected.mat",
            {"filelist": np.array([["1_001_1_01.png"]], dtype=object), "labels": [[1]],
             "train_idx": [[1.0]], "query_idx": [[2.0]], "gallery_idx": [[1.0]]})
    with pytest.raises(ReidError, match=r"query_idx holds 2, outside 1..1"):
        CUHK03(tmp_path)


def test_a_release_without_the_boxes_asked_for_says_what_it_has(tmp_path):
    write_release(tmp_path / "cuhk03", kinds=("detected",))
    write_split(tmp_path / "cuhk03", "labeled")
    with pytest.raises(ReidError, match=r"has no 'labeled' images \(has: detected\)"):
        CUHK03Labeled(tmp_path)
    assert not any((tmp_path / "cuhk03-np").iterdir())  # the staging folder is gone


def test_without_h5py_the_error_says_what_to_install(release, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(ReidError, match=r"needs h5py and scipy: pip install "
                       r"'reid-toolbox\[cuhk03\]'"):
        CUHK03(release)


def test_boxes_must_be_detected_or_labeled(release):
    with pytest.raises(ReidError, match="CUHK03 boxes must be one of detected, labeled"):
        cuhk03_release.convert_release(release / "cuhk03", release / "x", "manual")
