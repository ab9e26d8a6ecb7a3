"""DVC: data.dvc is honest (the generator reproduces its hash) and dvc.yaml reproduces."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, TINY_DATA, TINY_TRAIN, as_yaml

BIN = Path(sys.executable).parent


def sh(*cmd: str, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def git_dvc_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    sh("git", "init", "-q", cwd=path)
    sh("git", "config", "user.email", "ci@example.com", cwd=path)
    sh("git", "config", "user.name", "ci", cwd=path)
    sh(str(BIN / "dvc"), "init", "-q", cwd=path)
    return path


def dvc_out(dvc_file: Path) -> dict:
    return yaml.safe_load(dvc_file.read_text())["outs"][0]


def test_generator_reproduces_the_tracked_data_hash(tmp_path):
    """`make data` on a fresh clone regenerates exactly the bytes data.dvc records."""
    from reid.config import load_config
    from reid.stages import ensure_synthetic
    repo = git_dvc_repo(tmp_path / "repo")
    cfg = load_config(ROOT / "params" / "synthetic.yml", ["DATASETS.ROOT", str(repo / "data")])
    ensure_synthetic(cfg)
    sh(str(BIN / "dvc"), "add", "-q", "data", cwd=repo)
    ours, tracked = dvc_out(repo / "data.dvc"), dvc_out(ROOT / "data.dvc")
    assert (ours["md5"], ours["nfiles"], ours["size"]) == (
        tracked["md5"], tracked["nfiles"], tracked["size"])
