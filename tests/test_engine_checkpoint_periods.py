"""When training checkpoints are written (epochs, iterations, minutes), how many stay, and
model_best.pth chosen by the periodic evaluation's metric; on the toy trainer (2 iterations
per epoch)."""
from __future__ import annotations

import pytest
import torch

from reid.engine.checkpoint import Checkpointer
from reid.engine.hooks import (HookBase, PeriodicCheckpointer, PeriodicEvaluator,
                               best_metric_value, check_best_metric)
from reid.errors import ReidError
from toys import make_trainer


class RecordingCheckpointer(Checkpointer):
    """A Checkpointer that notes every save and delete, in order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, str]] = []

    def save(self, name, **data):
        path = super().save(name, **data)
        self.events.append(("save", path.name))
        return path

    def delete(self, name):
        assert (self.save_dir / name).is_file()
        super().delete(name)
        self.events.append(("delete", name))


def checkpointed_training(tmp_path, max_epoch=5, hooks=(), **periods):
    found = {}

    def build(model, optimizer, scheduler):
        found["checkpointer"] = RecordingCheckpointer(model, tmp_path, optimizer, scheduler)
        found["hook"] = PeriodicCheckpointer(found["checkpointer"], max_epoch=max_epoch,
                                             **periods)
        return list(hooks) + [found["hook"]]
    make_trainer(max_epoch=max_epoch, hooks=build).train()
    return found["checkpointer"], found["hook"]


def test_epoch_and_iteration_periods_and_only_the_newest_kept(tmp_path):
    checkpointer, hook = checkpointed_training(tmp_path, period_epochs=2, period_iters=3,
                                               keep=2)
    # iterations 1..10; epochs end at 2, 4, 6, 8; iteration 6 ends epoch 3 (not a multiple
    # of 2 epochs): an iteration checkpoint; one file at most per iteration
    written = ["model_iter_0000003.pth", "model_0002.pth", "model_iter_0000006.pth",
               "model_0004.pth", "model_iter_0000009.pth", "model_final.pth"]
    assert [name for what, name in checkpointer.events if what == "save"] == written
    # an older file goes only once the newer one is in place
    assert checkpointer.events == [
        ("save", written[0]), ("save", written[1]), ("save", written[2]),
        ("delete", written[0]), ("save", written[3]), ("delete", written[1]),
        ("save", written[4]), ("delete", written[2]), ("save", written[5])]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint", "model_0004.pth", "model_final.pth", "model_iter_0000009.pth"]
    saved = torch.load(tmp_path / "model_iter_0000009.pth", weights_only=True)
    assert (saved["epoch"], saved["iteration"], saved["trainer"]["iteration"]) == (4, 9, 9)
    assert saved["trainer"]["hooks"]["PeriodicCheckpointer"]["periodic"] == [
        "model_0004.pth", "model_iter_0000009.pth"]


def test_a_period_in_minutes_follows_the_clock(tmp_path):
    now = {"t": 0.0}

    class Clock(HookBase):  # 25 s per iteration
        def after_step(self):
            now["t"] = 25.0 * self.trainer.done

    checkpointer, _ = checkpointed_training(tmp_path, hooks=[Clock()], period_epochs=0,
                                            period_minutes=1.0, clock=lambda: now["t"])
    # >= 60 s since the last save: after iterations 3 (75 s), 6 (150 s) and 9 (225 s)
    assert [name for what, name in checkpointer.events if what == "save"] == [
        "model_iter_0000003.pth", "model_iter_0000006.pth", "model_iter_0000009.pth",
        "model_final.pth"]


def test_model_best_holds_the_weights_of_the_best_evaluation_only(tmp_path):
    scores = iter([10.0, 30.0, 20.0])  # after epochs 1, 2, 3 (the 4th is left to evaluate)
    snapshots = {}

    def evaluate():
        snapshots[trainer.iter] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return {"SetA": {"Rank-1": 50.0, "mAP": next(scores)}, "SetB": {"mAP": 99.0}}

    trainer = make_trainer(max_epoch=4)
    checkpointer = Checkpointer(trainer.model, tmp_path, trainer.optimizer, trainer.scheduler)
    evaluator = PeriodicEvaluator(evaluate, 1, 4, save_best=checkpointer.save_weights)
    periodic = PeriodicCheckpointer(checkpointer, 1, 4)
    for hook in (evaluator, periodic):
        hook.trainer = trainer
    trainer.hooks = [evaluator, periodic]
    trainer.train()

    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert set(best) == {"model", "best"}  # weights only: nothing to resume with
    assert best["best"] == {"metric": "SetA.mAP", "value": 30.0, "iteration": 4}
    for key, value in snapshots[4].items():
        assert torch.equal(best["model"][key], value), key
    third = torch.load(tmp_path / "model_0003.pth", weights_only=True)
    assert third["trainer"]["hooks"]["PeriodicEvaluator"]["best"]["value"] == 30.0


def test_the_best_metric_may_name_its_test_set():
    results = {"SetA": {"mAP": 1.0}, "SetB": {"mAP": 2.0, "Rank-1": 3.0}}
    assert best_metric_value(results, "mAP") == ("SetA.mAP", 1.0)
    assert best_metric_value(results, "SetB.Rank-1") == ("SetB.Rank-1", 3.0)
    with pytest.raises(ReidError, match=r"TEST.BEST_METRIC 'SetB.mINP' is not among the "
                       r"evaluation's results \(SetA.mAP, SetB.mAP, SetB.Rank-1\)"):
        best_metric_value(results, "SetB.mINP")


def test_a_best_metric_naming_an_unknown_test_set_is_refused_before_training():
    check_best_metric("mAP", ("SetA",))
    check_best_metric("SetA.Rank-1", ("SetA", "SetB"))
    for wanted in ("SetC.mAP", "SetA."):
        with pytest.raises(ReidError, match=rf"TEST.BEST_METRIC '{wanted}' must be a metric "
                           r"\(e.g. mAP, Rank-1\) of the first test set or <test set>.<metric> "
                           r"with a test set of DATASETS.TESTS \(SetA, SetB\)"):
            check_best_metric(wanted, ("SetA", "SetB"))
