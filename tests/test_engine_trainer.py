import io
import itertools
import logging
import re
import statistics
import sys
import types

import pytest
import torch
from torch.utils.data import DataLoader

from reid.engine import events as events_module
from reid.engine.checkpoint import Checkpointer
from reid.engine.hooks import (HookBase, LayerFreezer, MetricsLogger, PeriodicCheckpointer,
                               PeriodicEvaluator, ProgressBar)
from reid.engine.trainer import TrainingDiverged, set_sampler_epoch
from reid.errors import ReidError
from reid.utils import comm
from toys import ToyReidNet, make_loader, make_records, make_trainer, solver_cfg


class Recorder(HookBase):
    def __init__(self) -> None:
        self.events = []
        self.metrics = []

    def before_train(self):
        self.events.append(("before_train", self.trainer.epoch, self.trainer.iter))

    def before_epoch(self):
        self.events.append(("before_epoch", self.trainer.epoch, self.trainer.iter))

    def before_step(self):
        self.events.append(("before_step", self.trainer.epoch, self.trainer.iter))

    def after_step(self):
        self.events.append(("after_step", self.trainer.epoch, self.trainer.iter))
        self.metrics.append(dict(self.trainer.metrics))

    def after_epoch(self):
        self.events.append(("after_epoch", self.trainer.epoch, self.trainer.iter))

    def after_train(self):
        self.events.append(("after_train", self.trainer.epoch, self.trainer.iter))


def test_hooks_run_in_order_with_epoch_and_iteration():
    recorder = Recorder()
    trainer = make_trainer(max_epoch=2, hooks=[recorder])  # 16 records / 8 = 2 its per epoch
    trainer.train()
    step = lambda e, i: [("before_step", e, i), ("after_step", e, i)]  # noqa: E731
    assert recorder.events == [
        ("before_train", 0, 0),
        ("before_epoch", 0, 0), *step(0, 0), *step(0, 1), ("after_epoch", 0, 2),
        ("before_epoch", 1, 2), *step(1, 2), *step(1, 3), ("after_epoch", 1, 4),
        ("after_train", 1, 4),
    ]
    assert trainer.max_iter == 4 and trainer.completed
    assert trainer.scheduler.last_epoch == 4  # stepped once per iteration
    assert trainer.data_loader.sampler.epochs_set == [0, 1]
    assert trainer.images_seen == 32


def test_step_backpropagates_the_sum_of_the_losses():
    recorder = Recorder()
    trainer = make_trainer(max_epoch=1, hooks=[recorder])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    for metrics in recorder.metrics:
        assert metrics.keys() == {"loss_cls", "loss_reg", "total_loss", "lr"}
        assert metrics["total_loss"] == pytest.approx(metrics["loss_cls"] + metrics["loss_reg"])
    # linear warmup over 2 iterations from 0.1: factors 0.1 and 0.55
    assert [m["lr"] for m in recorder.metrics] == pytest.approx([0.001, 0.0055])
    after = trainer.model.state_dict()
    assert not torch.equal(before["heads.weight"], after["heads.weight"])
    assert not torch.equal(before["backbone.1.weight"], after["backbone.1.weight"])


def test_iters_per_epoch_longer_than_the_loader_cycles_it():
    loader = make_loader(count=16, batch_size=8)  # 2 batches
    recorder = Recorder()
    trainer = make_trainer(max_epoch=2, hooks=[recorder], loader=loader, iters_per_epoch=5)
    trainer.train()
    assert trainer.iter == 10 and trainer.images_seen == 80
    assert loader.sampler.epochs_set == [0, 1]


def test_empty_loader_is_a_user_error():
    loader = make_loader(count=4, batch_size=8)  # drop_last: no batch at all
    trainer = make_trainer(loader=loader, iters_per_epoch=1)
    with pytest.raises(ReidError, match="yielded no batch"):
        trainer.train()


def test_set_epoch_reaches_a_batch_sampler_and_the_sampler_inside_it():
    class EpochAware:
        def __init__(self, inner=None):
            self.sampler = inner
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter([[0, 1]])

        def __len__(self):
            return 1

    inner = EpochAware()
    batch_sampler = EpochAware(inner)
    loader = DataLoader(make_records(4), batch_sampler=batch_sampler)
    set_sampler_epoch(loader, 7)
    assert batch_sampler.epochs == [7] and inner.epochs == [7]


def test_a_model_that_returns_no_loss_dict_fails_clearly():
    class FeaturesOnly(ToyReidNet):
        def forward(self, batch):
            return self.backbone(batch["images"])

    with pytest.raises(TypeError, match="must return a dict of losses, got Tensor"):
        make_trainer(model=FeaturesOnly()).train()


def test_amp_is_ignored_on_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="reid.engine.trainer"):
        trainer = make_trainer(amp=True)
    assert trainer.amp is False
    assert "SOLVER.FP16_ENABLED is ignored on cpu" in caplog.text


class SkippingScaler:
    """A GradScaler whose first step finds inf gradients and skips the optimizer, as AMP's
    does when its initial scale is too large."""

    def __init__(self, optimizer):
        self.optimizer, self.steps = optimizer, 0

    def scale(self, loss):
        return loss

    def unscale_(self, optimizer):
        pass

    def step(self, optimizer):
        self.steps += 1
        if self.steps > 1:
            optimizer.step()

    def update(self):
        pass


@pytest.mark.parametrize("amp", [True, False])
def test_a_skipped_amp_step_advances_the_schedule_without_pytorchs_warning(amp, recwarn):
    trainer = make_trainer(max_epoch=1, iters_per_epoch=3)
    trainer.amp = amp  # AMP itself needs CUDA; its scaler's skipped step is what matters here
    trainer.scaler = SkippingScaler(trainer.optimizer)
    trainer.train()
    assert trainer.scheduler.last_epoch == 3  # stepped every iteration, the skipped one too
    warned = [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    # Silenced only where a skipped step is expected (AMP); elsewhere it still shows.
    assert len(warned) == (0 if amp else 1)


# ----------------------------------------------------------------------------- divergence
def checkpointing(tmp_path, period=1, max_epoch=5):
    def build(model, optimizer, scheduler):
        checkpointer = Checkpointer(model, tmp_path, optimizer, scheduler)
        return [PeriodicCheckpointer(checkpointer, period, max_epoch)]
    return build


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    # 2 iterations per epoch; the 6th forward (epoch 3, iteration 6) returns NaN.
    model = ToyReidNet(nan_at_call=6)
    trainer = make_trainer(max_epoch=5, model=model, hooks=checkpointing(tmp_path))
    with pytest.raises(TrainingDiverged) as info:
        trainer.train()
    message = str(info.value)
    assert isinstance(info.value, ReidError)
    assert re.fullmatch(
        r"loss became nan at epoch 3, iteration 6 \(loss_cls=nan, loss_reg=\d\.\d+(e-\d+)?\); "
        rf"last good checkpoint: {re.escape(str(tmp_path / 'model_0002.pth'))}; "
        r"try a lower SOLVER.BASE_LR \(the LR was [\d.e-]+\)", message), message
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint", "model_0001.pth", "model_0002.pth"]  # no model_final.pth
    saved = torch.load(tmp_path / "model_0002.pth", weights_only=True)
    assert (saved["epoch"], saved["iteration"]) == (2, 4)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0002.pth"
    # The bad step was not applied: the weights are those after iteration 5, all finite.
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.scheduler.last_epoch == 5


def test_divergence_before_any_checkpoint_says_so():
    trainer = make_trainer(max_epoch=2, model=ToyReidNet(nan_at_call=1))
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, iteration 1 .*last good checkpoint: "
                                               r"none saved yet;"):
        trainer.train()


def test_infinite_loss_is_reported_as_inf():
    class InfLoss(ToyReidNet):
        def forward(self, batch):
            losses = super().forward(batch)
            losses["loss_reg"] = losses["loss_reg"] + float("inf")
            return losses

    with pytest.raises(TrainingDiverged, match=r"loss became inf at epoch 1, iteration 1 "
                                               r"\(loss_cls=[\d.]+, loss_reg=inf\)"):
        make_trainer(model=InfLoss()).train()


# ----------------------------------------------------------------------------- resume
class CrashAfterEpoch(HookBase):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def after_epoch(self):
        if self.trainer.epoch + 1 == self.epoch:
            raise KeyboardInterrupt("machine lost")


def test_resume_continues_from_the_saved_epoch_with_the_same_optimizer_state(tmp_path):
    max_epoch = 4
    reference = make_trainer(max_epoch=max_epoch)
    reference.train()

    def crashing(model, optimizer, scheduler):
        return checkpointing(tmp_path, 1, max_epoch)(model, optimizer, scheduler) + [
            CrashAfterEpoch(2)]
    with pytest.raises(KeyboardInterrupt):
        make_trainer(max_epoch=max_epoch, hooks=crashing).train()
    saved_optimizer = torch.load(tmp_path / "model_0002.pth", weights_only=True)["optimizer"]

    recorder = Recorder()
    resumed = make_trainer(max_epoch=max_epoch, seed=123, hooks=[recorder])  # other init
    checkpointer = Checkpointer(resumed.model, tmp_path, resumed.optimizer, resumed.scheduler)
    start = checkpointer.resume_or_load(None, resume=True)
    assert start == 2
    restored = resumed.optimizer.state_dict()["state"]
    for key, state in saved_optimizer["state"].items():
        assert torch.equal(restored[key]["exp_avg"], state["exp_avg"])
        assert torch.equal(restored[key]["step"], state["step"])
    resumed.train(start_epoch=start)

    assert recorder.events[0] == ("before_train", 2, 4)
    assert resumed.data_loader.sampler.epochs_set == [2, 3]
    final, expected = resumed.model.state_dict(), reference.model.state_dict()
    for key in expected:
        assert torch.allclose(final[key], expected[key], rtol=0, atol=1e-6), key


def test_a_resumed_run_names_its_resume_point_when_it_diverges(tmp_path):
    make_trainer(max_epoch=2, hooks=checkpointing(tmp_path, 1, 2)).train()  # saves model_final
    model = ToyReidNet(nan_at_call=1)
    resumed = make_trainer(max_epoch=4, model=model, hooks=checkpointing(tmp_path, 1, 4))
    start = Checkpointer(model, tmp_path, resumed.optimizer,
                         resumed.scheduler).resume_or_load(None, resume=True)
    with pytest.raises(TrainingDiverged, match=re.escape(
            f"at epoch 3, iteration 5 (loss_cls=nan, ") + r".*" + re.escape(
            f"last good checkpoint: {tmp_path / 'model_final.pth'};")):
        resumed.train(start_epoch=start)


# ----------------------------------------------------------------------------- hooks
def test_periodic_checkpointer_saves_every_period_and_the_final_model(tmp_path):
    trainer = make_trainer(max_epoch=5, hooks=checkpointing(tmp_path, period=2, max_epoch=5))
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint", "model_0002.pth", "model_0004.pth", "model_final.pth"]
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert (final["epoch"], final["iteration"]) == (5, 10)
    assert torch.equal(final["model"]["heads.weight"], trainer.model.heads.weight)
    assert trainer.last_checkpoint == str(tmp_path / "model_final.pth")


def fake_clock(monkeypatch):
    """perf_counter for the metrics hook that advances one second per call."""
    ticks = itertools.count()
    monkeypatch.setattr(events_module, "time",
                        types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))


def test_metrics_sink_gets_every_term_at_the_right_steps(monkeypatch):
    fake_clock(monkeypatch)
    received = []
    recorder = Recorder()
    cfg = solver_cfg(OPT="SGD", BASE_LR=0.1, WARMUP_ITERS=8, WARMUP_FACTOR=0.5, STEPS=[10])
    loader = make_loader(count=32, batch_size=8)  # 4 iterations per epoch
    trainer = make_trainer(max_epoch=2, cfg=cfg, loader=loader, hooks=[
        recorder, MetricsLogger(lambda metrics, step: received.append((step, metrics)), 3)])
    trainer.train()

    # Every 3 iterations, plus each epoch's end unless just sent: 3, 4 | 6, 8.
    assert [step for step, _ in received] == [3, 4, 6, 8]
    for _, metrics in received:
        assert metrics.keys() == {"loss_cls", "loss_reg", "total_loss", "lr", "images_per_sec",
                                  "epoch"}
    totals = [m["total_loss"] for m in recorder.metrics]
    first, second = received[0][1], received[1][1]
    # Medians over the last 20 iterations (all of them here), as FastReID's writers report.
    assert first["total_loss"] == pytest.approx(statistics.median(totals[:3]))
    assert second["total_loss"] == pytest.approx(statistics.median(totals[:4]))
    assert received[2][1]["loss_cls"] == pytest.approx(
        statistics.median(m["loss_cls"] for m in recorder.metrics[:6]))
    assert first["lr"] == pytest.approx(0.0625)   # iteration 2: 0.1 * (0.5 * 6/8 + 2/8)
    assert second["lr"] == pytest.approx(0.06875)  # iteration 3: 0.1 * (0.5 * 5/8 + 3/8)
    assert first["images_per_sec"] == pytest.approx(24.0)   # 3 batches of 8 in one "second"
    assert second["images_per_sec"] == pytest.approx(8.0)
    assert [m["epoch"] for _, m in received] == pytest.approx([0.75, 1.0, 1.5, 2.0])


def test_metrics_sink_is_silent_on_other_ranks(monkeypatch):
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    received = []
    make_trainer(hooks=[MetricsLogger(lambda m, s: received.append(s), 1)]).train()
    assert received == []


def test_progress_bar_shows_epoch_and_loss():
    out = io.StringIO()
    bar = ProgressBar(file=out, mininterval=0)
    make_trainer(max_epoch=2, hooks=[bar]).train()
    text = out.getvalue()
    assert "4/4" in text and "epoch=2/2" in text and re.search(r"loss=\d+\.\d{4}", text)
    assert bar.bar is None  # closed


class LogsMidTraining(HookBase):
    def after_step(self):
        if self.trainer.iter == 1:
            self.handlers = list(logging.getLogger().handlers)
            logging.getLogger("reid.test").warning("a line in the middle of training")


def test_console_log_lines_go_above_the_progress_bar_while_it_shows(capsys):
    console = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(console)
    try:
        probe = LogsMidTraining()
        make_trainer(max_epoch=2, hooks=[ProgressBar(mininterval=0), probe]).train()
        assert console not in probe.handlers  # replaced by tqdm's handler during training
        assert console in root.handlers  # and restored afterwards
    finally:
        root.removeHandler(console)
    err = capsys.readouterr().err
    assert "a line in the middle of training\n" in err
    assert "4/4" in err  # the bar itself


class FreezeProbe(HookBase):
    """Records, after each step, whether backbone/heads weights changed and BN mode."""

    def __init__(self, model):
        self.model = model
        self.rows = []

    def before_step(self):
        self.backbone = self.model.backbone[1].weight.detach().clone()
        self.heads = self.model.heads.weight.detach().clone()
        self.running_mean = self.model.backbone[2].running_mean.clone()
        self.bn_training = self.model.backbone[2].training

    def after_step(self):
        self.rows.append((
            not torch.equal(self.backbone, self.model.backbone[1].weight),
            not torch.equal(self.heads, self.model.heads.weight),
            not torch.equal(self.running_mean, self.model.backbone[2].running_mean),
            self.bn_training))


def test_layer_freezer_freezes_then_restores(tmp_path):
    model = ToyReidNet()
    probe = FreezeProbe(model)
    # Probe before the freezer so its after_step sees the step before the unfreeze.
    trainer = make_trainer(max_epoch=2, model=model,
                           hooks=[LayerFreezer(model, ["backbone"], 3), probe])
    trainer.train()
    # (backbone moved, heads moved, BN stats moved, BN in train mode) for 4 iterations
    assert probe.rows == [(False, True, False, False)] * 3 + [(True, True, True, True)]
    assert all(p.requires_grad for p in model.parameters())
    assert model.training and model.backbone.training


def test_layer_freezer_rejects_unknown_names():
    with pytest.raises(ReidError, match="MODEL.FREEZE_LAYERS names no module called backbon; "
                                        "the model's top-level modules are: backbone, heads"):
        LayerFreezer(ToyReidNet(), ["backbon"], 10)


def test_layer_freezer_restores_after_a_failed_run():
    model = ToyReidNet(nan_at_call=2)
    model.backbone[1].bias.requires_grad_(False)  # not trainable to begin with: stays so
    trainer = make_trainer(model=model, hooks=[LayerFreezer(model, ["backbone"], 100)])
    with pytest.raises(TrainingDiverged):
        trainer.train()
    assert model.backbone[1].weight.requires_grad and model.backbone[2].weight.requires_grad
    assert not model.backbone[1].bias.requires_grad
    assert model.backbone.training


def test_layer_freezer_freezes_a_bare_parameter_like_the_classifier():
    """SOLVER.FREEZE_FC_ITERS freezes the parameter "heads.weight", not a module."""
    model = ToyReidNet()
    probe = FreezeProbe(model)
    make_trainer(max_epoch=2, model=model,
                 hooks=[LayerFreezer(model, ["heads.weight"], 2), probe]).train()
    assert [heads_moved for _, heads_moved, _, _ in probe.rows] == [False, False, True, True]
    assert all(backbone_moved for backbone_moved, _, _, _ in probe.rows)
    assert all(bn_training for _, _, _, bn_training in probe.rows)  # no module was frozen
    assert model.heads.weight.requires_grad


def test_periodic_evaluator_runs_every_period_except_the_last_epoch():
    epochs, received = [], []

    def evaluate():
        epochs.append(trainer.epoch + 1)
        return {"Toy": {"mAP": 10.0 * len(epochs)}}

    trainer = make_trainer(max_epoch=5, hooks=[
        PeriodicEvaluator(evaluate, 2, 5, lambda metrics, step: received.append((step, metrics)))])
    trainer.train()
    assert epochs == [2, 4]  # epoch 5 is left to the evaluate stage
    assert [metrics for _, metrics in received] == [{"eval.Toy.mAP": 10.0},
                                                    {"eval.Toy.mAP": 20.0}]
    assert received[1][0] - received[0][0] == 2 * 2  # two epochs of two iterations apart
