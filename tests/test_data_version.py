"""The recorded data version is the data actually read (tasks/data_version.py): DVC's own hash
when a current .dvc file tracks DATASETS.ROOT, else a content hash; the registry goes by it."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RECIPE, ROOT
from reid.config import load_config
from tasks import data_version as dv
from tasks.data_version import data_version, dvc_dir_md5
from tasks.model_registry import CHAMPION, register
from tasks.tracking import Tracker
from test_dvc import BIN, dvc_out, git_dvc_repo, sh
from test_model_registry import OVERRIDES, TEST_SET, tiny_checkpoint

IMAGE = "SyntheticMarket1501/Market-1501-v15.09.15/bounding_box_train"


def config(root: Path, *overrides: str):
    return load_config(RECIPE, [*OVERRIDES, "DATASETS.ROOT", str(root), *overrides])


def copy_of(tiny_root: Path, where: Path) -> Path:
    shutil.copytree(tiny_root, where)
    return where


def first_image(root: Path) -> Path:
    return sorted((root / IMAGE).glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, tiny_root) -> Path:
    """A git + DVC repo whose ``data`` (the tiny set plus files that test the serialisation:
    a non-ASCII name with a space, CRLF text, an empty file, a nested .git DVC skips) was
    added by ``dvc add`` itself."""
    repo = git_dvc_repo(tmp_path_factory.mktemp("dvc") / "repo")
    data = copy_of(tiny_root, repo / "data")
    (data / "notes").mkdir()
    (data / "notes" / "é ü.txt").write_bytes(b"line\r\nline\r\n")  # DVC 3: bytes as they are
    (data / "notes" / "empty").write_bytes(b"")
    (data / "notes" / ".git").mkdir()
    (data / "notes" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    sh(str(BIN / "dvc"), "add", "-q", "data", cwd=repo)
    return repo


# --------------------------------------------------------------------------- (a) DVC's hash
def test_directory_hash_is_what_dvc_add_records(dvc_repo, monkeypatch):
    out = dvc_out(dvc_repo / "data.dvc")
    assert dvc_dir_md5(dvc_repo / "data") == (out["md5"], out["nfiles"])
    monkeypatch.chdir(dvc_repo)  # DATASETS.ROOT relative, as in the default recipe
    version = data_version(config(Path("data")))
    assert (version.kind, version.digest, version.files) == ("dvc", out["md5"], out["nfiles"])
    assert (version.dvc_file, version.note) == (str(dvc_repo / "data.dvc"), "")
    assert version.tag == f"dvc:{out['md5']}"


def test_the_default_data_is_versioned_by_the_repositorys_data_dvc(tmp_path):
    """`make data` regenerates the bytes data.dvc records, so the default run records its md5."""
    from reid.stages import ensure_synthetic
    cfg = load_config(ROOT / "params" / "synthetic.yml", ["DATASETS.ROOT", str(tmp_path / "data")])
    ensure_synthetic(cfg)
    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")
    version = data_version(cfg)
    assert (version.kind, version.digest) == ("dvc", dvc_out(ROOT / "data.dvc")["md5"])


# --------------------------------------------------------------------------- (b) the bug
def test_a_root_outside_the_repository_never_gets_the_repositorys_data_dvc_hash(
        tiny_overrides, mlflow_uri, monkeypatch):
    """Run from the repository (whose data.dvc tracks its own data/) on another root: the
    run records that root's content, not data.dvc's md5 (what it recorded before)."""
    from reid.cli import main
    monkeypatch.chdir(ROOT)
    assert main(["prepare", *tiny_overrides]) == 0
    [run] = MlflowClient(mlflow_uri).search_runs([Tracker().experiment_id])
    repo_md5 = dvc_out(ROOT / "data.dvc")["md5"]
    root = Path(tiny_overrides[tiny_overrides.index("DATASETS.ROOT") + 1]).resolve()
    dataset = run.inputs.dataset_inputs[0].dataset
    assert "dvc.data.md5" not in run.data.tags
    assert run.data.tags["reid.data.version"].startswith("content:")
    assert repo_md5 not in run.data.tags["reid.data.version"]
    assert (dataset.source, dataset.source_type) == (str(root), "local")
    assert dataset.digest != repo_md5[:36]


# --------------------------------------------------------------------------- (c) content
def test_the_content_digest_follows_the_bytes_not_the_place_or_the_times(tiny_root, tmp_path):
    a, b = copy_of(tiny_root, tmp_path / "a"), copy_of(tiny_root, tmp_path / "b")
    original = data_version(config(a))
    assert original.kind == "content" and original.dvc_file is None
    assert data_version(config(b)).digest == original.digest  # two copies, one version

    image = first_image(a)
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))
    assert data_version(config(a)).digest == original.digest  # touched: same bytes

    flipped = bytearray(image.read_bytes())
    flipped[-3] ^= 0xFF  # same size, so only the bytes tell
    image.write_bytes(bytes(flipped))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**10))
    assert data_version(config(a)).digest != original.digest


def test_each_file_is_read_once_per_process(tiny_root, tmp_path, monkeypatch):
    root = copy_of(tiny_root, tmp_path / "root")
    read = []
    real = dv._md5s_of_files
    monkeypatch.setattr(dv, "_md5s_of_files", lambda paths: read.extend(paths) or real(paths))
    first = data_version(config(root))
    assert len(read) == first.files > 0
    read.clear()
    assert data_version(config(root)) == first and read == []  # a pipeline's later stages


# --------------------------------------------------------------------------- (d) stale .dvc
def test_a_stale_dvc_file_falls_back_to_the_content_with_one_warning(dvc_repo, tiny_root,
                                                                     tmp_path, caplog):
    repo = Path(shutil.copytree(dvc_repo, tmp_path / "repo"))
    image = first_image(repo / "data")
    image.write_bytes(image.read_bytes() + b"\0")
    recorded = dvc_out(repo / "data.dvc")["md5"]
    with caplog.at_level(logging.WARNING, logger="tasks.data_version"):
        versions = [data_version(config(repo / "data")) for _ in range(2)]
    current, _ = dvc_dir_md5(repo / "data")
    expected = (f"{repo / 'data.dvc'} records {recorded} but {repo / 'data'} now hashes to "
                f"{current}: run `dvc add {repo / 'data'}`")
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert versions[0] == versions[1]
    assert (versions[0].kind, versions[0].dvc_file, versions[0].note) == (
        "content", str(repo / "data.dvc"), expected)
    # The fallback is the content version: an untracked copy of the same files has it.
    untracked = Path(shutil.copytree(repo / "data", tmp_path / "copy"))
    assert data_version(config(untracked)).digest == versions[0].digest


def test_unreadable_data_gets_a_note_and_no_version(tmp_path, mlflow_uri):
    tracker = Tracker()
    with tracker.run("export") as run_id:
        tracker.log_dataset(run_id, config(tmp_path / "absent"))
    tags = MlflowClient(mlflow_uri).get_run(run_id).data.tags
    assert "reid.data.version" not in tags
    assert "not found under" in tags["reid.data.note"]


# --------------------------------------------------------------------------- (e) registry
def evaluated(tracker: Tracker, root: Path, mAP: float) -> str:
    with tracker.run("evaluate") as run_id:
        tracker.log_dataset(run_id, config(root))
        tracker.log_results(run_id, {TEST_SET: {"mAP": mAP}})
    return run_id


def test_only_a_model_of_the_same_data_version_takes_the_title(tiny_root, tmp_path, mlflow_uri):
    same = copy_of(tiny_root, tmp_path / "same")
    other = copy_of(tiny_root, tmp_path / "other")
    image = first_image(other)
    image.write_bytes(image.read_bytes() + b"\0")
    tracker, client = Tracker(), MlflowClient(mlflow_uri)
    weights = tiny_checkpoint(tmp_path / "w.pth", seed=0)
    cfg = config(tiny_root)

    assert register(tracker, evaluated(tracker, tiny_root, 40.0), "m", cfg, weights)["promoted"]
    out = register(tracker, evaluated(tracker, other, 90.0), "m", cfg, weights)
    assert not out["promoted"] and "data version" in out["reason"]
    out = register(tracker, evaluated(tracker, same, 50.0), "m", cfg, weights)  # a copy
    assert out["promoted"], out["reason"]
    champion = client.get_model_version_by_alias("m", CHAMPION)
    assert champion.tags["reid.data.version"] == data_version(config(same)).tag
