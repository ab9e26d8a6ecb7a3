"""build_hooks (FastReID's DefaultTrainer.build_hooks), user hooks from the API and the HOOKS
key, IterationTimer and the PreciseBN hook before periodic evaluations."""
import itertools
import logging

import pytest
import torch

from conftest import RECIPE, TINY_DATA, TINY_TRAIN, as_overrides
from reid import stages
from reid.config import get_cfg, load_config
from reid.engine.checkpoint import Checkpointer
from reid.engine.defaults import build_hooks, hook_from_name
from reid.engine.events import PeriodicWriter, read_metrics
from reid.engine.hooks import (HookBase, IterationTimer, LayerFreezer, PeriodicCheckpointer,
                               PeriodicEvaluator, PreciseBN, ProgressBar)
from reid.engine.preemption import StopOnSignal
from reid.errors import ReidError
from reid.utils.events import get_event_storage
from toys import IMAGE_SHAPE, ToyReidNet, make_loader, make_trainer


class CountingHook(HookBase):
    """A user's hook: counts its steps and reports a scalar through the event storage."""

    def __init__(self):
        self.steps = 0

    def after_step(self):
        self.steps += 1
        get_event_storage().put_scalar("user_steps", float(self.steps), smoothing_hint=False)


class ConfiguredHook(HookBase):
    def __init__(self, cfg):
        self.seed = cfg.SEED


class NotAHook:
    pass


def default_cfg(**changes):
    cfg = get_cfg()
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return cfg


def test_build_hooks_orders_the_defaults_and_places_user_hooks_before_writer_and_checkpoints(
        tmp_path):
    cfg = default_cfg(SEED=7, HOOKS=["test_engine_build_hooks:CountingHook",
                                     "test_engine_build_hooks:ConfiguredHook"])
    extra = CountingHook()
    hooks = build_hooks(cfg, ToyReidNet(), Checkpointer(ToyReidNet(), tmp_path), dict,
                        list, extra_hooks=[extra])
    assert [type(h) for h in hooks] == [
        IterationTimer, LayerFreezer, LayerFreezer, PeriodicEvaluator, ProgressBar,
        CountingHook, CountingHook, ConfiguredHook, PeriodicWriter, PeriodicCheckpointer,
        StopOnSignal]
    assert hooks[5] is extra and hooks[7].seed == 7
    cfg.TEST.PRECISE_BN.ENABLED = True
    hooks = build_hooks(cfg, ToyReidNet(), Checkpointer(ToyReidNet(), tmp_path), dict, list)
    assert [type(h) for h in hooks][3:5] == [PreciseBN, PeriodicEvaluator]


@pytest.mark.parametrize("name, message", [
    ("no_such_module_here:Hook", r"'no_such_module_here:Hook' must name an importable hook "
                                 r"class as module:Class \(No module named"),
    ("test_engine_build_hooks:Missing", r"importable hook class as module:Class"),
    ("test_engine_build_hooks", r"importable hook class as module:Class"),
    ("test_engine_build_hooks:NotAHook", r"must name a subclass of .*HookBase"),
])
def test_hooks_entries_that_name_no_hook_class_are_refused(name, message):
    with pytest.raises(ReidError, match=message):
        hook_from_name(name, get_cfg())


def test_iteration_timer_puts_step_times_and_logs_the_speed(caplog):
    ticks = itertools.count()
    timer = IterationTimer(warmup_iter=1, clock=lambda: float(next(ticks)))
    trainer = make_trainer(max_epoch=2, hooks=[timer])  # 2 iterations per epoch
    with caplog.at_level(logging.INFO, logger="reid.engine.train_hooks"):
        trainer.train()
    # Clock reads: 0 before training, then (before_step, after_step) pairs 1-2, 3-4, ...
    assert trainer.storage.history("time").values() == [(1.0, 0), (1.0, 1), (1.0, 2),
                                                         (1.0, 3)]
    assert "overall training speed: 3 iterations in 0:00:03 (1.0000 s / it)" in caplog.messages
    assert "total training time: 0:00:09" in caplog.messages


def test_precise_bn_hook_gives_periodic_evaluations_exact_statistics_and_keeps_the_losses():
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(8, *IMAGE_SHAPE, generator=generator) for _ in range(3)]

    def run(with_precise_bn):
        torch.manual_seed(0)
        model, seen, losses = ToyReidNet(), [], []

        def evaluate():
            linear, bn = model.backbone[1], model.backbone[2]
            with torch.no_grad():  # the exact mean of the three batches' linear outputs
                exact = torch.stack([linear(b.flatten(1)).mean(0) for b in batches]).mean(0)
            seen.append((bn.running_mean.clone(), exact))
            return {"toy": {"mAP": 1.0}}

        class Losses(HookBase):
            def after_step(self):
                losses.append(self.trainer.metrics["total_loss"])
        hooks = [Losses()]
        if with_precise_bn:
            hooks.append(PreciseBN(model, lambda: batches, 3, period_epochs=1, max_epoch=3))
        hooks.append(PeriodicEvaluator(evaluate, 1, 3))
        make_trainer(max_epoch=3, model=model, loader=make_loader(count=16), hooks=hooks).train()
        return seen, losses

    precise, precise_losses = run(True)
    plain, plain_losses = run(False)
    assert len(precise) == 2  # after epochs 1 and 2, not the last
    for running, exact in precise:
        assert torch.allclose(running, exact, atol=1e-5)
    assert not torch.allclose(plain[0][0], plain[0][1], atol=1e-3)  # momentum estimates
    assert precise_losses == plain_losses  # train-mode BN uses batch statistics


def test_train_stage_runs_config_and_api_hooks_and_writes_tensorboard(tiny_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "out"
    cfg = load_config(str(RECIPE), as_overrides({
        **TINY_DATA, **TINY_TRAIN, "DATASETS.ROOT": str(tiny_root), "OUTPUT_DIR": str(out),
        "SOLVER.LOG_PERIOD": 1, "SOLVER.MAX_EPOCH": 1, "TENSORBOARD.ENABLED": True,
        "HOOKS": ["test_engine_build_hooks:CountingHook"]}))
    api_hook = CountingHook()
    stages.train(cfg, hooks=[api_hook])

    records = [r for r in read_metrics(out / "metrics.json") if "total_loss" in r]
    assert api_hook.steps == len(records) > 0
    assert [r["user_steps"] for r in records] == [float(i + 1) for i in range(len(records))]
    assert all(r["time"] > 0 for r in records)  # IterationTimer's seconds per iteration
    events = EventAccumulator(str(out))
    events.Reload()
    assert [e.step for e in events.Scalars("total_loss")] == [r["iteration"] for r in records]
