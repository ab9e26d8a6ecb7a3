"""KD lineage from the registry: model URIs in MODEL.WEIGHTS / KD.MODEL_WEIGHTS resolve through
MLflow to a checked local file, and the runs that use them say which teacher they learned from."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import mlflow.artifacts
import pytest
import torch
from mlflow.tracking import MlflowClient

import tasks.environment  # noqa: F401  (Prefect reads its logging settings when it loads)
from conftest import RECIPE, TINY_DATA, TINY_TRAIN, as_yaml, free_port
from reid.cli import main
from reid.config import load_config
from reid.errors import ReidError
from reid.modeling import build_model
from tasks import lineage
from tasks.compare import compare
from tasks.model_registry import TAG_SHA256, register
from tasks.tracking import DATA_VERSION_TAG, Tracker

pytestmark = pytest.mark.usefixtures("one_thread")

TEST_SET = "SyntheticMarket1501"
NAME = "teacher-model"
FIELDS = ("uri", "run_id", "model", "version", "sha256")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_root) -> dict:
    """One MLflow store and model cache for the module, with tiny teacher / student recipes
    and a teacher (random weights of the teacher recipe's model, 8 classes like the tiny set)
    registered as version 1 = champion of NAME."""
    folder = tmp_path_factory.mktemp("lineage")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.setenv(lineage.CACHE_ENV, str(folder / "model-cache"))
        recipes = write_recipes(folder, tiny_root)
        torch.manual_seed(0)
        cfg = load_config(recipes["teacher"])
        model = build_model(cfg)
        checkpoint = folder / "teacher.pth"
        torch.save({"model": model.state_dict(), "optimizer": {}}, checkpoint)
        tracker = Tracker()
        run_id = evaluated_run(tracker)
        out = register(tracker, run_id, NAME, cfg, checkpoint, test_set=TEST_SET)
        assert out["version"] == 1 and out["promoted"]
        yield {"run_id": run_id, "state": model.state_dict(), "tracker": tracker,
               "recipes": recipes, "cfg": cfg, "checkpoint": checkpoint,
               "cache": folder / "model-cache"}


def write_recipes(folder: Path, tiny_root: Path) -> dict[str, Path]:
    """A tiny teacher recipe and a student recipe distilling from NAME's champion."""
    tiny = {**TINY_DATA, **TINY_TRAIN, "DATASETS.ROOT": str(tiny_root),
            "MODEL.BACKBONE.PRETRAIN": False}
    teacher = folder / "teacher.yml"
    teacher.write_text(f"_BASE_: {RECIPE}\n" + as_yaml({**tiny, "OUTPUT_DIR": str(folder / "t"),
                                                        "MODEL.HEADS.NUM_CLASSES": 8}))
    student = folder / "student.yml"
    student.write_text(f"_BASE_: {RECIPE}\n" + as_yaml({
        **tiny, "OUTPUT_DIR": str(folder / "s"), "MODEL.META_ARCHITECTURE": "Distiller",
        "KD.MODEL_CONFIG": str(teacher), "KD.MODEL_WEIGHTS": f"models:/{NAME}@champion"}))
    return {"teacher": teacher, "student": student}


def evaluated_run(tracker: Tracker) -> str:
    """A finished run with what registration reads: an mAP and a data version."""
    with tracker.run("evaluate") as run_id:
        tracker.log_metrics(run_id, {f"{TEST_SET}.mAP": 40.0})
        tracker.set_tags(run_id, {DATA_VERSION_TAG: "content:" + "1" * 32})
    return run_id


@pytest.fixture
def registered(store, monkeypatch) -> dict:
    """The module's store, as this test's environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["tracker"].client.tracking_uri)
    monkeypatch.setenv(lineage.CACHE_ENV, str(store["cache"]))
    return store


@pytest.fixture
def recipes(registered) -> dict[str, Path]:
    return registered["recipes"]


def registered_file(client: MlflowClient, tmp_path: Path) -> Path:
    """The reference: the registered version's model.pth, downloaded by MLflow directly."""
    folder = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1",
                                                 dst_path=str(tmp_path / "reference"),
                                                 tracking_uri=client.tracking_uri)
    return Path(folder) / "model.pth"


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, parts", [
    ("models:/m@champion", {"name": "m", "alias": "champion"}),
    ("models:/team/m/3", {"name": "team/m", "version": "3"}),
    ("runs:/abc123/checkpoints/model_final.pth",
     {"run_id": "abc123", "path": "checkpoints/model_final.pth"}),
])
def test_model_uris_parse(text, parts):
    assert lineage.parse(text, "KD.MODEL_WEIGHTS") == lineage.ModelUri(text, **parts)


@pytest.mark.parametrize("text", ["models:/m", "models:/m/latest", "models:/@x", "runs:/abc"])
def test_malformed_model_uris_are_refused_with_the_key(text):
    with pytest.raises(ReidError, match=r"^MODEL.WEIGHTS .* is not a model URI: expected"):
        lineage.parse(text, "MODEL.WEIGHTS")


# --------------------------------------------------------------------------- resolving
def test_alias_version_and_run_uris_resolve_to_the_registered_file(registered, tmp_path):
    cache = registered["cache"]
    tracker = registered["tracker"]
    reference = registered_file(tracker.client, tmp_path)
    run_id = registered["run_id"]
    for uri in (f"models:/{NAME}@champion", f"models:/{NAME}/1",
                f"runs:/{run_id}/registered_model/model.pth", f"runs:/{run_id}/registered_model"):
        found = lineage.resolve(uri, "KD.MODEL_WEIGHTS", tracker.client)
        assert found.file.is_relative_to(cache) and found.run_id == run_id
        assert found.sha256 == sha256(found.file) == sha256(reference)
        state = torch.load(found.file, weights_only=True)["model"]
        assert state.keys() == registered["state"].keys()
        assert all(torch.equal(state[k], v) for k, v in registered["state"].items())
    by_alias = lineage.resolve(f"models:/{NAME}@champion", "KD.MODEL_WEIGHTS", tracker.client)
    assert (by_alias.model, by_alias.version) == (NAME, "1")
    version = tracker.client.get_model_version(NAME, "1")
    assert version.tags[TAG_SHA256] == sha256(reference)  # recorded at registration


def test_a_cached_file_is_reused_while_intact_and_fetched_again_when_not(registered, monkeypatch):
    client = registered["tracker"].client
    uri = f"models:/{NAME}/1"
    first = lineage.resolve(uri, "MODEL.WEIGHTS", client)
    calls = []
    download = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                        lambda *a, **k: calls.append(1) or download(*a, **k))
    assert lineage.resolve(uri, "MODEL.WEIGHTS", client) == first and not calls
    first.file.write_bytes(b"corrupted")  # a damaged cache is never handed out
    again = lineage.resolve(uri, "MODEL.WEIGHTS", client)
    assert calls == [1] and again.sha256 == first.sha256 == sha256(again.file)


def test_weights_that_differ_from_the_registered_sha256_are_refused(registered):
    client = registered["tracker"].client
    recorded = client.get_model_version(NAME, "1").tags[TAG_SHA256]
    client.set_model_version_tag(NAME, "1", TAG_SHA256, "0" * 64)
    try:
        with pytest.raises(ReidError, match=r"sha256 .* but the registry recorded 000000000000"):
            lineage.resolve(f"models:/{NAME}/1", "KD.MODEL_WEIGHTS", client)
    finally:
        client.set_model_version_tag(NAME, "1", TAG_SHA256, recorded)


def test_resolve_config_replaces_uris_and_returns_lineage_tags(registered, recipes):
    cfg = load_config(recipes["student"])
    local, tags = lineage.resolve_config(cfg)
    assert cfg.KD.MODEL_WEIGHTS == f"models:/{NAME}@champion"  # the config keeps the URI
    assert Path(local.KD.MODEL_WEIGHTS).is_file()
    assert tags == {"reid.teacher.uri": f"models:/{NAME}@champion",
                    "reid.teacher.run_id": registered["run_id"], "reid.teacher.model": NAME,
                    "reid.teacher.version": "1",
                    "reid.teacher.sha256": sha256(local.KD.MODEL_WEIGHTS)}
    # A model that is not a Distiller has no teacher: the KD keys are not its lineage.
    plain = load_config(recipes["student"], ["MODEL.META_ARCHITECTURE", "Baseline"])
    assert lineage.resolve_config(plain) == (plain, {})


# --------------------------------------------------------------------------- errors
def one_error_line(capsys, argv) -> str:
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        assert main(argv) == 2
    finally:  # the command's log file handler (in OUTPUT_DIR, removed on failure) goes too
        root.handlers[:] = saved
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reid: error: ")
    return err[0]


@pytest.mark.parametrize("recipe, key, uri, expected", [
    ("student", "KD.MODEL_WEIGHTS", f"models:/{NAME}@gone", "no version of 'teacher-model' holds the "
     "alias 'gone'"),
    ("student", "KD.MODEL_WEIGHTS", f"models:/{NAME}/7",
     "version 7 of 'teacher-model' does not exist"),
    ("student", "KD.MODEL_WEIGHTS", "models:/nobody@champion",
     "there is no registered model 'nobody'"),
    ("student", "KD.MODEL_WEIGHTS", "runs:/0123456789abcdef/model.pth",
     "there is no run 0123456789abcdef"),
    ("teacher", "MODEL.WEIGHTS", f"models:/{NAME}/7",
     "MODEL.WEIGHTS models:/teacher-model/7: version 7"),
])
def test_a_missing_alias_version_or_run_is_one_error_line(registered, recipes, capsys, recipe,
                                                          key, uri, expected):
    command = "distill" if recipe == "student" else "train"
    line = one_error_line(capsys, [command, "--config", str(recipes[recipe]), key, uri])
    assert expected in line
    assert not (Path(load_config(recipes[recipe]).OUTPUT_DIR) / "model_final.pth").exists()


def test_a_deleted_version_is_one_error_line(registered, recipes, capsys):
    tracker = registered["tracker"]
    version = register(tracker, evaluated_run(tracker), NAME, registered["cfg"],
                       registered["checkpoint"], test_set=TEST_SET)["version"]
    tracker.client.delete_model_version(NAME, str(version))
    line = one_error_line(capsys, ["distill", "--config", str(recipes["student"]),
                                   "KD.MODEL_WEIGHTS", f"models:/{NAME}/{version}"])
    assert f"version {version} of 'teacher-model' does not exist" in line


def test_a_tracking_server_that_is_down_is_one_error_line(recipes, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    line = one_error_line(capsys, ["distill", "--config", str(recipes["student"]), "--no-track"])
    assert "the MLflow tracking server http://127.0.0.1:" in line and "does not answer" in line


# --------------------------------------------------------------------------- the flow
def test_distill_flow_from_the_champion_tags_every_student_run(prefect_server, registered,
                                                               recipes, tmp_path):
    from flows.distill import distill
    client = registered["tracker"].client
    reference = sha256(registered_file(client, tmp_path))

    out = distill(config=str(recipes["student"]), compare_without_kd=False,
                  register_model="student-model")

    expected = {"reid.teacher.uri": f"models:/{NAME}@champion",
                "reid.teacher.run_id": registered["run_id"], "reid.teacher.model": NAME,
                "reid.teacher.version": "1", "reid.teacher.sha256": reference}
    runs = client.search_runs([client.get_run(out["mlflow_run_id"]).info.experiment_id])
    by_id = {run.info.run_id: run for run in runs}

    def under(parent_id):
        return {r.info.run_name: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent_id}
    roles = under(out["mlflow_run_id"])
    assert set(roles) == {"teacher", "student (KD)"}
    student = roles["student (KD)"]
    stages = under(student.info.run_id)
    assert set(stages) == {"prepare", "distill", "precise_bn", "evaluate"}
    for run in [roles["teacher"], student, *stages.values()]:
        tags = by_id[run.info.run_id].data.tags
        missing = {k: v for k, v in expected.items() if tags.get(k) != v}
        assert not missing, f"{run.info.run_name}: lineage tags missing or wrong: {missing}"
    # The teacher the student learned from was evaluated, and the student was registered.
    assert f"{TEST_SET}.mAP" in roles["teacher"].data.metrics
    version = client.get_model_version_by_alias("student-model", "candidate")
    assert version.run_id == stages["evaluate"].info.run_id
    # The run's config keeps the URI it asked for.
    assert stages["distill"].data.params["KD.MODEL_WEIGHTS"] == f"models:/{NAME}@champion"
    # `reid compare` shows the teacher of the student, and none for the teacher itself.
    table = compare(track=False).table.set_index("run id")
    assert table.loc[student.info.run_id, "teacher"] == f"{NAME} v1"
    assert table.loc[student.info.run_id, "teacher sha256"] == reference
