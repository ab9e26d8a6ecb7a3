import json
import os
import stat

import pytest

from reid.utils.io import atomic_write, atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_usual_permissions_of_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    path = atomic_write_text(tmp_path / "results.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == expected


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    path = atomic_write_json(tmp_path / "results.json", {"mAP": 81.5})

    def crash(f):
        f.write(b'{"mAP": ')
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"mAP": 81.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_text_and_binary_modes_write_what_they_are_given(tmp_path):
    assert atomic_write(tmp_path / "a.bin", lambda f: f.write(b"\x00\x01")).read_bytes() == \
        b"\x00\x01"
    assert atomic_write(tmp_path / "sub" / "b.txt", lambda f: f.write("é"), mode="w"
                        ).read_text() == "é"
