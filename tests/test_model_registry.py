"""MLflow model registry: aliases, the promotion rule, a registered model loads back exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import RECIPE
from reid.cli import main
from reid.config import load_config
from reid.errors import ReidError
from reid.modeling import build_model
from tasks.data_version import DataVersion, data_version
from tasks.model_registry import (CANDIDATE, CHAMPION, Standing, load_registered, register,
                                  should_promote)
from tasks.tracking import Tracker

TEST_SET = "SyntheticMarket1501"
OVERRIDES = ["MODEL.DEVICE", "cpu", "INPUT.SIZE_TEST", "[64, 32]", "MODEL.HEADS.NUM_CLASSES", "4",
             "MODEL.BACKBONE.PRETRAIN", "False"]
# Data versions as Tracker.log_dataset records them (tasks/data_version.py).
DATA_V1, DATA_V2 = "dvc:" + "1" * 32 + ".dir", "content:" + "2" * 32


# --------------------------------------------------------------------------- the rule alone
@pytest.mark.parametrize("candidate, champion, promoted, why", [
    (Standing(TEST_SET, DATA_V1, 40.0), None, True, "no champion yet"),
    (Standing(TEST_SET, DATA_V1, 50.0), Standing(TEST_SET, DATA_V1, 40.0), True, "beats"),
    (Standing(TEST_SET, DATA_V1, 40.0), Standing(TEST_SET, DATA_V1, 40.0), False,
     "does not beat"),
    (Standing(TEST_SET, DATA_V1, 30.0), Standing(TEST_SET, DATA_V1, 40.0), False,
     "does not beat"),
    (Standing(TEST_SET, DATA_V2, 90.0), Standing(TEST_SET, DATA_V1, 40.0), False,
     "data version"),
    (Standing("Market1501", DATA_V1, 90.0), Standing(TEST_SET, DATA_V1, 40.0), False,
     "evaluated on Market1501"),
    (Standing(TEST_SET, None, 90.0), Standing(TEST_SET, DATA_V1, 40.0), False,
     "candidate's data version is unknown"),
    # A champion registered before data versions: its dvc.data.md5 could be another data's.
    (Standing(TEST_SET, DATA_V1, 90.0), Standing(TEST_SET, None, 40.0), False,
     "champion's data version is unknown"),
    (Standing(TEST_SET, "1" * 32 + ".dir", 90.0), Standing(TEST_SET, "1" * 32 + ".dir", 40.0),
     False, "unknown"),  # a bare md5 (the old tag) is not a version
])
def test_promotion_rule(candidate, champion, promoted, why):
    decision, reason = should_promote(candidate, champion)
    assert decision is promoted and why in reason


# --------------------------------------------------------------------------- registry
@pytest.fixture(scope="module")
def cfg():
    torch.set_num_threads(1)
    return load_config(RECIPE, OVERRIDES)


def checkpoint_model(path) -> torch.nn.Module:
    """The reference: a model built from the config with the checkpoint's state dict loaded
    by plain PyTorch, in eval mode."""
    model = build_model(load_config(RECIPE, OVERRIDES))
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return model.eval()


def tiny_checkpoint(path, seed: int, with_optimizer: bool = False):
    torch.manual_seed(seed)
    model = build_model(load_config(RECIPE, OVERRIDES))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
    data = {"model": model.state_dict()}
    if with_optimizer:  # what model_final.pth holds besides the weights
        data["optimizer"] = {"state": {}, "param_groups": []}
    torch.save(data, path)
    return path


def evaluated_run(tracker: Tracker, tmp_path, mAP: float, data: str) -> str:
    """An MLflow run carrying what tasks.tracked.evaluate logs: results and the data version
    ``data`` (``kind:digest``)."""
    kind, _, digest = data.partition(":")
    version = DataVersion(kind, digest, str(tmp_path / "data"), files=1)
    with tracker.run("evaluate") as run_id:
        tracker.log_dataset(run_id, load_config(RECIPE, OVERRIDES), version)
        tracker.log_results(run_id, {TEST_SET: {"mAP": mAP, "Rank-1": mAP + 10}})
    return run_id


def features(model: torch.nn.Module, batch: int) -> torch.Tensor:
    images = torch.rand(batch, 3, 64, 32, generator=torch.Generator().manual_seed(batch)) * 255
    with torch.no_grad():
        return model(images)


def aliases(client: MlflowClient, name: str) -> dict:
    return {alias: int(client.get_model_version_by_alias(name, alias).version)
            for alias in (CANDIDATE, CHAMPION)}


def test_aliases_follow_the_promotion_rule_and_the_champion_loads_exactly(tmp_path, cfg,
                                                                         mlflow_uri):
    tracker, client = Tracker(), MlflowClient(mlflow_uri)
    first = tiny_checkpoint(tmp_path / "a.pth", seed=0, with_optimizer=True)
    better = tiny_checkpoint(tmp_path / "b.pth", seed=1)
    other_data = tiny_checkpoint(tmp_path / "c.pth", seed=2)

    out = register(tracker, evaluated_run(tracker, tmp_path, 40.0, DATA_V1), "tiny", cfg, first)
    assert (out["version"], out["promoted"]) == (1, True)
    assert aliases(client, "tiny") == {CANDIDATE: 1, CHAMPION: 1}
    artifact = client.download_artifacts(client.get_model_version("tiny", "1").run_id,
                                         "registered_model/model.pth", str(tmp_path / "v1"))
    assert set(torch.load(artifact, weights_only=True)) == {"model"}  # no optimizer state

    out = register(tracker, evaluated_run(tracker, tmp_path, 50.0, DATA_V1), "tiny", cfg, better)
    assert (out["version"], out["promoted"]) == (2, True)
    assert aliases(client, "tiny") == {CANDIDATE: 2, CHAMPION: 2}

    # A higher mAP on another data version does not take the title.
    out = register(tracker, evaluated_run(tracker, tmp_path, 90.0, DATA_V2), "tiny", cfg,
                   other_data)
    assert (out["version"], out["promoted"]) == (3, False) and "data version" in out["reason"]
    assert aliases(client, "tiny") == {CANDIDATE: 3, CHAMPION: 2}
    tags = client.get_model_version("tiny", "3").tags
    assert (tags["reid.test_set"], float(tags["reid.mAP"]), tags["reid.data.version"]) == (
        TEST_SET, 90.0, DATA_V2)

    # The registered champion is the checkpoint of version 2, feature for feature, any batch.
    champion = load_registered("tiny")
    reference = checkpoint_model(better)
    assert not champion.training
    for batch in (1, 3):
        assert torch.equal(features(champion, batch), features(reference, batch))
    candidate = load_registered("tiny", CANDIDATE, tracking_uri=mlflow_uri)
    assert torch.equal(features(candidate, 2),
                       features(checkpoint_model(other_data), 2))
    assert not torch.equal(features(candidate, 2), features(champion, 2))


def test_registration_errors_name_the_problem(tmp_path, cfg, mlflow_uri):
    tracker = Tracker()
    weights = tiny_checkpoint(tmp_path / "a.pth", seed=0)
    with tracker.run("train") as run_id:  # no evaluation results on this run
        pass
    with pytest.raises(ReidError, match=f"run {run_id} has no metric {TEST_SET}.mAP"):
        register(tracker, run_id, "tiny", cfg, weights)
    with pytest.raises(ReidError, match="needs a name"):
        register(tracker, run_id, " ", cfg, weights)
    with pytest.raises(ReidError, match="no version of registered model 'absent' holds the "
                                        "alias 'champion'"):
        load_registered("absent")


# --------------------------------------------------------------------------- through the CLI
def test_reid_eval_register_registers_the_evaluated_weights(tmp_path, tiny_overrides, mlflow_uri,
                                                            capsys):
    weights = tiny_checkpoint(tmp_path / "w.pth", seed=3)
    argv = ["eval", "--config", str(RECIPE), "--weights", str(weights), *tiny_overrides]
    assert main([*argv, "--register", "reid-tiny"]) == 0
    assert "registered reid-tiny version 1 as candidate and champion" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    version = MlflowClient(mlflow_uri).get_model_version_by_alias("reid-tiny", CHAMPION)
    assert float(version.tags["reid.mAP"]) == pytest.approx(results[TEST_SET]["mAP"])
    # The data read: the tiny set, untracked.
    assert version.tags["reid.data.version"] == data_version(
        load_config(RECIPE, tiny_overrides)).tag
    assert version.tags["reid.data.version"].startswith("content:")
    assert main([*argv, "--no-track", "--register", "reid-tiny"]) == 2
    assert "--register needs MLflow: drop --no-track" in capsys.readouterr().err


def test_racing_registrations_leave_the_better_one_champion(tmp_path, cfg, mlflow_uri,
                                                            monkeypatch):
    """A (mAP 60) reads the champion (v1, mAP 50) and decides, then waits inside its critical
    section until B (mAP 70) has either finished its whole registration or is blocked on the
    promotion lock; no wait has a deadline that decides the outcome. Under the lock B waits
    for A, judges against A's version and ends champion; without it B judges against v1 as
    well and A's stale decision then overwrites B's title (this test fails)."""
    import fcntl
    import threading

    from tasks import model_registry as registry

    tracker, client = Tracker(), MlflowClient(mlflow_uri)
    register(tracker, evaluated_run(tracker, tmp_path, 50.0, DATA_V1), "race", cfg,
             tiny_checkpoint(tmp_path / "v1.pth", seed=0))
    run_a = evaluated_run(tracker, tmp_path, 60.0, DATA_V1)
    run_b = evaluated_run(tracker, tmp_path, 70.0, DATA_V1)
    changed = threading.Condition()
    seen = {"a decided": False, "b blocked": False, "b done": False}
    decisions, errors = [], []

    def note(event):
        with changed:
            seen[event] = True
            changed.notify_all()

    def wait_until(*events):
        with changed:  # the deadline only turns a hang into a failure
            assert changed.wait_for(lambda: any(seen[e] for e in events), timeout=300), seen

    real_should_promote = registry.should_promote

    def deciding_then_waiting(candidate, champion):
        decision = real_should_promote(candidate, champion)
        decisions.append((candidate.mAP, champion.mAP, decision[0]))
        if threading.current_thread().name == "A":
            note("a decided")
            wait_until("b blocked", "b done")
        return decision

    real_flock = fcntl.flock

    def flock_noting_when_b_waits(fd, operation):
        # The same lock, taken in two steps for B: a try, and when another holder has it,
        # a note before the blocking call.
        if threading.current_thread().name == "B" and operation == fcntl.LOCK_EX:
            try:
                return real_flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                note("b blocked")
        return real_flock(fd, operation)

    monkeypatch.setattr(registry, "should_promote", deciding_then_waiting)
    monkeypatch.setattr(fcntl, "flock", flock_noting_when_b_waits)

    def registering(run_id, seed):
        try:
            register(Tracker(), run_id, "race", cfg, tiny_checkpoint(
                tmp_path / f"{seed}.pth", seed=seed))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            if threading.current_thread().name == "B":
                note("b done")

    a = threading.Thread(target=registering, args=(run_a, 1), name="A")
    a.start()
    wait_until("a decided")
    b = threading.Thread(target=registering, args=(run_b, 2), name="B")
    b.start()
    a.join(timeout=300)
    b.join(timeout=300)
    assert not errors
    assert aliases(client, "race") == {CANDIDATE: 3, CHAMPION: 3}
    # A judged against v1 (50), B against A's v2 (60): the decisions were serialised ...
    assert decisions == [(60.0, 50.0, True), (70.0, 60.0, True)]
    assert seen["b blocked"]  # ... because B reached the lock while A held it, and waited


def test_promotion_lock_is_per_local_store(tmp_path):
    from tasks.tracking import local_store_path
    assert local_store_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert local_store_path(f"file://{tmp_path}/mlruns") == tmp_path / "mlruns"
    assert local_store_path("mlruns") == Path("mlruns")
    assert local_store_path("http://mlflow.example:5000") is None
