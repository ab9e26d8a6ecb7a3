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


def test_dvc_repro_runs_the_pipeline_then_is_a_noop(tmp_path, tiny_root):
    repo = git_dvc_repo(tmp_path / "repo")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "reid", repo / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params").mkdir()
    shutil.copy(ROOT / "params" / "Base-bagtricks.yml", repo / "params")
    # The default recipe, made tiny; same file name and OUTPUT_DIR as dvc.yaml expects.
    recipe = yaml.safe_load((ROOT / "params" / "synthetic.yml").read_text())
    (repo / "params" / "synthetic.yml").write_text(
        f"_BASE_: {recipe['_BASE_']}\nOUTPUT_DIR: {recipe['OUTPUT_DIR']}\n"
        + as_yaml({**TINY_DATA, **TINY_TRAIN,
                   "DATASETS.NAMES": ["SyntheticMarket1501"], "DATASETS.TESTS": ["SyntheticMarket1501"],
                   "MODEL.BACKBONE.DEPTH": "18x", "MODEL.BACKBONE.FEAT_DIM": 512,
                   "MODEL.BACKBONE.PRETRAIN": False, "TEST.PRECISE_BN.ENABLED": True,
                   "TEST.PRECISE_BN.DATASET": "SyntheticMarket1501"}))
    shutil.copytree(tiny_root, repo / "data")
    sh(str(BIN / "dvc"), "add", "-q", "data", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "tiny", cwd=repo)

    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = sh(str(BIN / "dvc"), "repro", cwd=repo, env=env)
    for stage in ("prepare", "train", "precise_bn", "evaluate"):
        assert f"Running stage '{stage}'" in first
    results = repo / recipe["OUTPUT_DIR"] / "results.json"
    assert results.is_file()

    second = sh(str(BIN / "dvc"), "repro", cwd=repo, env=env)
    assert "Running stage" not in second
    assert "up to date" in second.lower()

    metrics = sh(str(BIN / "dvc"), "metrics", "show", cwd=repo, env=env)
    assert "SyntheticMarket1501.mAP" in metrics or "mAP" in metrics
