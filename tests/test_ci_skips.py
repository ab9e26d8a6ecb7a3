"""In CI (CI=true) a test skipped because an optional package is missing fails; elsewhere
it is still a skip. Run on throw-away test files with this suite's conftest as a plugin."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PROBE = '''
import pytest

def test_needs_a_missing_package():
    pytest.importorskip("reid_no_such_optional_package")

def test_skipped_for_another_reason():
    pytest.skip("not for this machine")
'''
MODULE_PROBE = 'import pytest\npytest.importorskip("reid_no_such_package")\n'


def run_pytest(folder: Path, ci: str) -> str:
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest",
                          "-p", "no:cacheprovider", "--continue-on-collection-errors",
                          "--rootdir", str(folder), "test_probe.py", "module_probe.py"],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    return run.stdout


@pytest.mark.parametrize("ci, summary", [("true", "1 failed, 1 skipped, 1 error"),
                                         ("", "3 skipped")])
def test_missing_package_skip_fails_only_in_ci(tmp_path, ci, summary):
    """A test that skips (test_probe.py) and a module that skips at import (module_probe.py,
    a collection error in CI); a skip for another reason stays a skip."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "module_probe.py").write_text(MODULE_PROBE)
    out = run_pytest(tmp_path, ci)
    assert summary in out.splitlines()[-1], out
    out = " ".join(out.split())
    assert ("skipped in CI: could not import 'reid_no_such_optional_package'" in out) == bool(ci)
    assert ("skipped in CI: could not import 'reid_no_such_package'" in out) == bool(ci)


FULL_DISK = '''
import shutil
from collections import namedtuple

usage = namedtuple("usage", "total used free")
shutil.disk_usage = lambda path: usage(10 * 2**30, 9 * 2**30 + 2**29, 2**29)  # 0.5 GB free
'''


def test_the_suite_does_not_start_without_room_for_its_runs(tmp_path):
    """A disk too full for the suite's runs: one line saying what is needed, where, and what
    is free; not a thousand 'No space left on device' failures midway."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "fulldisk.py").write_text(FULL_DISK)
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_XDIST_WORKER"}
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{TESTS}", TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "fulldisk", "-p",
                          "conftest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          "test_probe.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert run.stderr.strip() == (f"ERROR: the test suite needs 3.0 GB free in {tmp_path} (its "
                                  "runs hold up to ~2.1 GB there at once); 0.5 GB free: free "
                                  "some space, or point TMPDIR (or --basetemp) at a disk with "
                                  "room"), run.stderr
    assert "passed" not in run.stdout and "failed" not in run.stdout
