"""`reid prepare` finds unreadable images before training (DATASETS.CHECK_IMAGES)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import RECIPE
from reid.cli import main
from reid.config import load_config
from reid.data.image_check import check_images, decode_problem, header_problem
from reid.errors import ReidError

MARKET_DIR = "Market-1501-v15.09.15"


@pytest.fixture
def market(tiny_root, tmp_path) -> Path:
    """A datasets root holding a (tiny) Market-1501 folder of our own to damage."""
    root = tmp_path / "datasets"
    shutil.copytree(tiny_root / "SyntheticMarket1501" / MARKET_DIR, root / MARKET_DIR)
    return root


def images(root: Path, split: str) -> list[Path]:
    """The images of ``split`` that the dataset reads (junk detections, pid -1, it skips)."""
    return sorted(p for p in (root / MARKET_DIR / split).glob("*.jpg")
                  if not p.name.startswith("-1_"))


def prepare(capsys, root: Path, out: Path, *overrides: str) -> tuple[int, list[str]]:
    code = main(["prepare", "--no-track", "--config", str(RECIPE), "DATASETS.ROOT", str(root),
                 "DATASETS.NAMES", '("Market1501",)', "DATASETS.TESTS", '("Market1501",)',
                 "TEST.PRECISE_BN.DATASET", "Market1501", "OUTPUT_DIR", str(out), *overrides])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("reid: error:")]


def start_of_scan(data: bytes) -> int:
    """Offset of the entropy-coded data of a baseline JPEG (after the SOS segment)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def corrupt_middle(path: Path) -> None:
    """Overwrite the middle third of the image data with 0xFF bytes: the header and the end
    marker stay intact, so only a decode can tell."""
    data = path.read_bytes()
    start = start_of_scan(data)
    third = (len(data) - start) // 3
    path.write_bytes(data[:start + third] + b"\xff" * third + data[start + 2 * third:])


def test_prepare_names_every_unreadable_image_in_one_line(capsys, market, tmp_path):
    truncated, garbage = images(market, "bounding_box_train")[3], images(market, "query")[0]
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    garbage.write_text("this is not an image\n")
    code, lines = prepare(capsys, market, tmp_path / "out")
    assert code == 2 and len(lines) == 1
    line = lines[0]
    assert line.startswith("reid: error: 2 unreadable image files: ")
    assert f"{truncated} (" in line
    assert f"{garbage} (not an image: cannot identify image file)" in line
    assert line.endswith("; remove or replace them, or set DATASETS.CHECK_IMAGES none to skip "
                         "this check")
    assert not (tmp_path / "out" / "datasets.json").exists()


def test_a_good_folder_passes(capsys, market, tmp_path):
    code, lines = prepare(capsys, market, tmp_path / "out")
    assert code == 0 and not lines
    assert (tmp_path / "out" / "datasets.json").is_file()


def test_decode_finds_corrupt_data_that_the_header_check_cannot(capsys, market, tmp_path):
    victim = images(market, "bounding_box_test")[2]
    corrupt_middle(victim)
    assert header_problem(str(victim)) is None
    assert prepare(capsys, market, tmp_path / "a")[0] == 0
    code, lines = prepare(capsys, market, tmp_path / "b", "DATASETS.CHECK_IMAGES", "decode")
    assert code == 2
    assert lines == [f"reid: error: 1 unreadable image file: {victim} (corrupt: broken data "
                     f"stream when reading image file); remove or replace them, or set "
                     f"DATASETS.CHECK_IMAGES none to skip this check"]


def test_none_skips_the_check(capsys, market, tmp_path):
    images(market, "query")[0].write_text("this is not an image\n")
    code, lines = prepare(capsys, market, tmp_path / "out", "DATASETS.CHECK_IMAGES", "none")
    assert code == 0 and not lines


def test_the_mode_must_be_one_of_the_checks():
    with pytest.raises(ReidError, match="DATASETS.CHECK_IMAGES must be one of header, decode, "
                                        "none; got 'full'"):
        load_config(None, ["DATASETS.CHECK_IMAGES", "full"])


@pytest.fixture
def jpeg(tmp_path) -> bytes:
    """A whole JPEG large enough that cutting its end leaves its header intact."""
    path = tmp_path / "whole.jpg"
    Image.new("RGB", (64, 128), (90, 120, 30)).save(path, quality=95)
    return path.read_bytes()


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_a_jpeg_cut_after_its_header_has_no_end_marker(tmp_path, jpeg):
    cut = write(tmp_path, "cut.jpg", jpeg[:start_of_scan(jpeg) + 10])
    assert header_problem(cut) == "truncated: no JPEG end marker"


def test_padding_after_the_end_marker_is_accepted(tmp_path, jpeg):
    assert header_problem(write(tmp_path, "padded.jpg", jpeg + b"\x00" * 300 + b"\n")) is None
    assert decode_problem(write(tmp_path, "plain.jpg", jpeg)) is None


def test_png_needs_its_iend_chunk(tmp_path):
    Image.new("RGB", (16, 32)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    assert header_problem(str(tmp_path / "whole.png")) is None
    assert header_problem(write(tmp_path, "cut.png", data[:-12])) == "truncated: no PNG end marker"


def test_an_empty_or_missing_file(tmp_path):
    assert header_problem(write(tmp_path, "empty.jpg", b"")) == (
        "not an image: cannot identify image file")
    assert header_problem(str(tmp_path / "gone.jpg")) == "cannot open: No such file or directory"


def test_the_error_names_five_files_and_counts_the_rest(tmp_path):
    bad = [write(tmp_path, f"{i}.jpg", b"no") for i in range(7)]
    with pytest.raises(ReidError) as info:
        check_images(bad, "header")
    message = str(info.value)
    assert "\n" not in message and message.startswith("7 unreadable image files: ")
    assert all(path in message for path in bad[:5]) and bad[5] not in message
    assert "(not an image: cannot identify image file) and 2 more; remove" in message
