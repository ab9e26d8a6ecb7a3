"""Solver options FastReID accepts: every torch.optim optimizer by name (built and stepped),
the ``exp`` warm-up, DELAY_EPOCHS held by every registered schedule, and config validation
that reads the registries (a newly registered optimizer is accepted)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reid.config import load_config
from reid.errors import ReidError
from reid.solver import (OPTIMIZER_REGISTRY, SCHEDULE_REGISTRY, WARMUP_REGISTRY,
                         build_lr_scheduler, build_optimizer)
from reid.solver.optimizer import UNSUITABLE
from toys import solver_cfg

# Optimizers that cannot train a model with biases and norms, with the reason they give.
REFUSED = {"LBFGS": "needs a closure", "SparseAdam": "sparse gradients",
           "Muon": "2D parameters"}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_every_torch_optimizer_is_registered_by_its_class_name():
    names = {name for name, cls in vars(torch.optim).items()
             if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
             and cls is not torch.optim.Optimizer}
    assert {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam"} <= names
    assert names <= set(OPTIMIZER_REGISTRY.names())
    assert set(UNSUITABLE) <= set(REFUSED)


@pytest.mark.parametrize("name", sorted(set(OPTIMIZER_REGISTRY.names()) - set(REFUSED)))
def test_optimizer_builds_and_steps(name):
    model = tiny_model()
    cfg = solver_cfg(OPT=name, BASE_LR=0.005, WEIGHT_DECAY=0.0, WEIGHT_DECAY_NORM=0.0,
                     WEIGHT_DECAY_BIAS=0.0)
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer).__name__ == name
    assert all(group["lr"] == pytest.approx(0.005) for group in optimizer.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(changed), f"{name} left some parameters unchanged"
    with torch.no_grad():
        assert model(x).pow(2).mean() < loss  # a small step goes downhill


@pytest.mark.parametrize("name", sorted(set(REFUSED) & set(OPTIMIZER_REGISTRY.names())))
def test_optimizers_that_cannot_train_this_model_say_why(name):
    with pytest.raises(ReidError, match=rf"SOLVER.OPT {name} cannot .*{REFUSED[name]}"):
        build_optimizer(solver_cfg(OPT=name), tiny_model())


def test_exp_warmup_is_geometric_from_the_factor():
    # FastReID: factor ** (1 - iteration / warmup_iters) during the warm-up, then 1.
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=2.0, STEPS=[50], WARMUP_METHOD="exp",
                     WARMUP_ITERS=4, WARMUP_FACTOR=0.01)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch=10)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2 * 0.01, 2 * 0.01 ** 0.75, 2 * 0.1, 2 * 0.01 ** 0.25, 2.0, 2.0])


@pytest.mark.parametrize("sched", SCHEDULE_REGISTRY.names())
def test_every_schedule_holds_the_base_lr_for_the_delay_epochs(sched):
    # 3 iterations per epoch, no warm-up: with DELAY_EPOCHS 4 the LR is BASE_LR for the first
    # 5 epochs (the main schedule first steps at the end of epoch 4) whatever the schedule;
    # without a delay it has changed by then.
    def lrs(delay: int) -> list[float]:
        cfg = solver_cfg(SCHED=sched, BASE_LR=1.0, STEPS=[1], GAMMA=0.1, MAX_EPOCH=8,
                         DELAY_EPOCHS=delay, WARMUP_ITERS=0, ETA_MIN_LR=0.0)
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch=3)
        out = []
        for _ in range(18):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    delayed = lrs(4)
    assert delayed[:15] == pytest.approx([1.0] * 15)
    assert delayed[15] < 1.0
    assert lrs(0)[3] < 1.0


def test_config_accepts_a_newly_registered_optimizer_and_lists_them_when_wrong():
    @OPTIMIZER_REGISTRY.register(name="ReidTestMomentumSGD")
    def build(groups, cfg):
        return torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=0.5)

    cfg = load_config(None, ["SOLVER.OPT", "ReidTestMomentumSGD"])
    assert build_optimizer(cfg, tiny_model()).defaults["momentum"] == 0.5
    assert load_config(None, ["SOLVER.OPT", "RMSprop", "SOLVER.WARMUP_METHOD", "exp"])
    with pytest.raises(ReidError) as err:
        load_config(None, ["SOLVER.OPT", "Adamm"])
    message = str(err.value)
    assert message.startswith("config key SOLVER.OPT must be one of ")
    assert "ReidTestMomentumSGD" in message and "RMSprop" in message
    assert message.endswith("got 'Adamm' (command line)")
    with pytest.raises(ReidError, match="SOLVER.WARMUP_METHOD must be one of constant, exp, "
                                        "linear"):
        load_config(None, ["SOLVER.WARMUP_METHOD", "cosine"])
    assert set(WARMUP_REGISTRY.names()) == {"constant", "exp", "linear"}


@pytest.mark.parametrize("key, module, registry", [
    ("TEST.METRIC", "reid.evaluation.distance", "DISTANCE_METRICS"),
    ("KD.LOSS", "reid.modeling.losses.distillation", "KD_LOSS_REGISTRY"),
    ("SOLVER.SCHED", "reid.solver.lr_scheduler", "SCHEDULE_REGISTRY"),
])
def test_other_named_components_are_checked_against_their_registry(key, module, registry,
                                                                    monkeypatch):
    import importlib
    names = getattr(importlib.import_module(module), registry)
    with pytest.raises(ReidError, match=rf"{key} must be one of {', '.join(names.names())}; "
                                        r"got 'reid_test_new'"):
        load_config(None, [key, "reid_test_new"])
    monkeypatch.setitem(names._objects, "reid_test_new", object())  # registered by a user
    assert dict(load_config(None, [key, "reid_test_new"]).flatten())[key] == "reid_test_new"
