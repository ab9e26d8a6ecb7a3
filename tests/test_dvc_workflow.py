"""DVC workflow on the real dvc.yaml: push/pull through a local remote restores the data and
every stage output in a fresh clone; `dvc exp run -S` sweeps a recipe key, and each MLflow
stage run of the experiment records the data hash and the git commit it ran on."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY_DATA, TINY_TRAIN, as_yaml
from test_dvc import BIN, dvc_out, git_dvc_repo, sh

DVC = str(BIN / "dvc")
RECIPE = yaml.safe_load((ROOT / "params" / "synthetic.yml").read_text())
OUT = Path(RECIPE["OUTPUT_DIR"])
STAGE_OUTPUTS = [OUT / name for name in ("datasets.json", "model_final.pth", "config.yaml",
                                         "metrics.json", "model_precise_bn.pth", "results.json")]


def tiny_recipe() -> str:
    """The default recipe made tiny; same file name and OUTPUT_DIR as dvc.yaml expects."""
    return (f"_BASE_: {RECIPE['_BASE_']}\nOUTPUT_DIR: {RECIPE['OUTPUT_DIR']}\n"
            + as_yaml({**TINY_DATA, **TINY_TRAIN,
                       "DATASETS.NAMES": ["SyntheticMarket1501"],
                       "DATASETS.TESTS": ["SyntheticMarket1501"],
                       "MODEL.BACKBONE.DEPTH": "18x", "MODEL.BACKBONE.FEAT_DIM": 512,
                       "MODEL.BACKBONE.PRETRAIN": False, "TEST.PRECISE_BN.ENABLED": True,
                       "TEST.PRECISE_BN.DATASET": "SyntheticMarket1501"}))


def stage_commands(dvc_yaml: Path) -> list[list[str]]:
    """dvc.yaml's stage commands, its ${vars} substituted, without the leading `reid`."""
    spec = yaml.safe_load(dvc_yaml.read_text())
    variables = {k: v for entry in spec.get("vars", []) for k, v in entry.items()}
    commands = []
    for stage in spec["stages"].values():
        cmd = stage["cmd"]
        for name, value in variables.items():
            cmd = cmd.replace("${" + name + "}", str(value))
        words = shlex.split(cmd)
        assert words[0] == "reid", cmd
        commands.append(words[1:])
    return commands


def run_stages_in_process(repo: Path) -> None:
    """dvc.yaml's stages through the CLI in this process (seconds instead of four process
    starts), exactly as dvc.yaml spells them; `dvc commit` then records them in dvc.lock as if
    `dvc repro` had run them."""
    from reid.cli import main
    previous = Path.cwd()
    os.chdir(repo)
    try:
        for command, *rest in stage_commands(repo / "dvc.yaml"):
            assert main([command, "--no-track", *rest]) == 0, command
    finally:
        os.chdir(previous)


def dvc_env(tmp_path: Path) -> dict:
    # An absolute tracking URI: `exp run --temp` / queued runs execute in a copy of the repo.
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def digest(path: Path) -> dict[str, str]:
    """{relative file: md5} of a file or a directory tree."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.relative_to(path.parent)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in files}


@pytest.fixture(scope="module")
def origin(tmp_path_factory, tiny_root) -> Path:
    """A git + DVC repo at a commit holding data.dvc and a dvc.lock of the whole pipeline."""
    repo = git_dvc_repo(tmp_path_factory.mktemp("origin") / "repo")
    for name in ("dvc.yaml", ".gitignore"):  # .gitignore: logs/ and data/ only live in DVC
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "reid", repo / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params").mkdir()
    shutil.copy(ROOT / "params" / "Base-bagtricks.yml", repo / "params")
    (repo / "params" / "synthetic.yml").write_text(tiny_recipe())
    shutil.copytree(tiny_root, repo / "data")
    sh(DVC, "add", "-q", "data", cwd=repo)
    run_stages_in_process(repo)
    sh(DVC, "commit", "-f", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "tiny pipeline", cwd=repo)
    assert "up to date" in sh(DVC, "status", cwd=repo).lower()
    return repo


def test_push_then_pull_in_a_fresh_clone_restores_data_and_stage_outputs(origin, tmp_path):
    remote = tmp_path / "remote"
    sh(DVC, "remote", "add", "-d", "store", str(remote), cwd=origin)
    sh("git", "commit", "-qam", "DVC remote", cwd=origin)
    sh(DVC, "push", cwd=origin)
    assert any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    assert not (clone / "data").exists() and not (clone / OUT).exists()  # only DVC has them
    sh(DVC, "pull", cwd=clone)
    for path in [Path("data"), *STAGE_OUTPUTS]:
        assert digest(clone / path) == digest(origin / path), path
    assert "up to date" in sh(DVC, "status", cwd=clone).lower()  # nothing to re-run


def test_exp_run_sets_a_recipe_key_and_mlflow_records_data_and_commit(origin, tmp_path):
    env = dvc_env(tmp_path)
    log = sh(DVC, "exp", "run", "--temp", "-S", "params/synthetic.yml:SOLVER.MAX_EPOCH=1",
             cwd=origin, env=env)
    assert "Stage 'prepare' didn't change" in log  # its params (DATASETS) are untouched
    for stage in ("train", "precise_bn", "evaluate"):
        assert f"Running stage '{stage}'" in log
    # --temp ran in a copy: the workspace recipe is unchanged.
    assert yaml.safe_load((origin / "params" / "synthetic.yml").read_text())["SOLVER"][
        "MAX_EPOCH"] == 2

    [baseline] = [rev for rev in json.loads(sh(DVC, "exp", "show", "--json", cwd=origin,
                                               env=env))
                  if rev.get("experiments")]
    [experiment] = [rev for exp in baseline["experiments"] for rev in exp["revs"]]
    params = experiment["data"]["params"]["params/synthetic.yml"]["data"]
    assert params["SOLVER"]["MAX_EPOCH"] == 1
    exp_map = experiment["data"]["metrics"][str(OUT / "results.json")]["data"][
        "SyntheticMarket1501"]["mAP"]

    head = sh("git", "rev-parse", "HEAD", cwd=origin).strip()
    data_md5 = dvc_out(origin / "data.dvc")["md5"]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = {run.info.run_name: run for run in client.search_runs(
        [client.get_experiment_by_name("reid").experiment_id])}
    assert set(runs) == {"train", "precise_bn", "evaluate"}
    assert runs["train"].data.params["SOLVER.MAX_EPOCH"] == "1"
    for name, run in runs.items():
        assert run.data.tags["mlflow.source.git.commit"] == head, name
    for name in ("train", "precise_bn", "evaluate"):
        assert runs[name].data.tags["dvc.data.md5"] == data_md5, name
    # DVC's experiment metrics and MLflow's are the same evaluation.
    assert runs["evaluate"].data.metrics["SyntheticMarket1501.mAP"] == pytest.approx(exp_map)
