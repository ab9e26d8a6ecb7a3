import io

import pytest
import torch
from torch import nn

from reid.errors import ReidError
from reid.solver import build_lr_scheduler, build_optimizer
from test_engine_toys import solver_cfg


class TwoPartNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        self.heads = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


GROUP_CFG = dict(BASE_LR=0.1, HEADS_LR_FACTOR=10.0, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY=5e-4,
                 WEIGHT_DECAY_BIAS=1e-5)


def groups_by_name(optimizer):
    return {g["name"]: (g["lr"], g["weight_decay"], len(g["params"]))
            for g in optimizer.param_groups}


def test_one_group_per_trainable_parameter_with_its_lr_and_weight_decay():
    optimizer = build_optimizer(solver_cfg(OPT="Adam", **GROUP_CFG), TwoPartNet())
    expected = {
        "backbone.0.weight": (0.1, 5e-4, 1),
        "backbone.0.bias": (0.2, 1e-5, 1),
        "backbone.1.weight": (0.1, 5e-4, 1),
        "backbone.1.bias": (0.2, 1e-5, 1),
        "heads.weight": (1.0, 5e-4, 1),
        "heads.bias": (2.0, 1e-5, 1),
    }
    got = groups_by_name(optimizer)
    assert got.keys() == expected.keys()  # the frozen layer is left out
    for name, (lr, wd, count) in expected.items():
        assert got[name] == (pytest.approx(lr), pytest.approx(wd), count), name


def test_groups_hold_the_models_own_parameters():
    model = TwoPartNet()
    optimizer = build_optimizer(solver_cfg(OPT="SGD", **GROUP_CFG), model)
    by_name = {g["name"]: g["params"][0] for g in optimizer.param_groups}
    assert by_name["heads.weight"] is model.heads.weight


@pytest.mark.parametrize("name, cls", [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW),
                                       ("SGD", torch.optim.SGD)])
def test_optimizer_chosen_by_name(name, cls):
    optimizer = build_optimizer(solver_cfg(OPT=name, MOMENTUM=0.8, NESTEROV=True), TwoPartNet())
    assert type(optimizer) is cls
    if name == "SGD":
        assert optimizer.param_groups[0]["momentum"] == 0.8
        assert optimizer.param_groups[0]["nesterov"] is True


def test_unknown_optimizer_names_the_closest():
    message = r"unknown optimizer \(SOLVER.OPT\) 'SDG'; did you mean 'SGD'"
    with pytest.raises(ReidError, match=message):
        build_optimizer(solver_cfg(OPT="SDG"), TwoPartNet())


def test_nesterov_without_momentum_is_a_user_error():
    with pytest.raises(ReidError, match="SOLVER.NESTEROV True needs SOLVER.MOMENTUM > 0"):
        build_optimizer(solver_cfg(OPT="SGD", MOMENTUM=0.0, NESTEROV=True), TwoPartNet())


def test_model_without_trainable_parameters_is_a_user_error():
    model = TwoPartNet().requires_grad_(False)
    with pytest.raises(ReidError, match="no trainable parameters"):
        build_optimizer(solver_cfg(), model)


# ----------------------------------------------------------------------------- schedules
def lrs_per_iteration(cfg, iters_per_epoch, count):
    """The LR of every group used at iterations 0..count-1 (scheduler stepped after each)."""
    model = nn.Sequential(nn.Linear(2, 2))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    lrs = []
    for _ in range(count):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_warmup_then_multistep():
    # 3 iterations per epoch: milestones at epochs 2 and 4 are iterations 6 and 12.
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=1.0, BIAS_LR_FACTOR=3.0, STEPS=[2, 4],
                     GAMMA=0.1, WARMUP_METHOD="linear", WARMUP_ITERS=4, WARMUP_FACTOR=0.2)
    lrs = lrs_per_iteration(cfg, iters_per_epoch=3, count=14)
    expected_weight = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert [w for w, _ in lrs] == pytest.approx(expected_weight)
    assert [b for _, b in lrs] == pytest.approx([3 * v for v in expected_weight])


def test_constant_warmup():
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=0.5, STEPS=[10], WARMUP_METHOD="constant",
                     WARMUP_ITERS=3, WARMUP_FACTOR=0.1)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=2, count=5)]
    assert lrs == pytest.approx([0.05, 0.05, 0.05, 0.5, 0.5])


def test_warmup_multiplies_a_decayed_lr():
    # Warmup (8 iterations) outlasts the first milestone (epoch 2 = iteration 6).
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=1.0, STEPS=[2], GAMMA=0.1,
                     WARMUP_METHOD="linear", WARMUP_ITERS=8, WARMUP_FACTOR=0.5)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=3, count=9)]
    assert lrs[5] == pytest.approx(0.8125)       # 0.5 * 3/8 + 5/8
    assert lrs[7] == pytest.approx(0.09375)      # (0.5 * 1/8 + 7/8) * 0.1
    assert lrs[8] == pytest.approx(0.1)


def test_cosine_with_delay():
    # 4 iterations per epoch: constant for 1 epoch (4 its), cosine down to 0.01 at iteration 12.
    cfg = solver_cfg(SCHED="CosineAnnealingLR", BASE_LR=1.0, DELAY_EPOCHS=1, MAX_EPOCH=3,
                     ETA_MIN_LR=0.01, WARMUP_ITERS=0)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=4, count=14)]
    assert lrs[:5] == pytest.approx([1.0] * 5)
    assert lrs[6] == pytest.approx(0.85501786)   # 0.01 + 0.99 * (1 + cos(pi/4)) / 2
    assert lrs[8] == pytest.approx(0.505)        # half way
    assert lrs[10] == pytest.approx(0.15498214)  # 0.01 + 0.99 * (1 - cos(pi/4)) / 2
    assert lrs[12] == pytest.approx(0.01)
    assert lrs[13] == pytest.approx(0.01)


def test_scheduler_state_round_trips_through_a_weights_only_checkpoint():
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=1.0, STEPS=[2], GAMMA=0.1,
                     WARMUP_ITERS=5, WARMUP_FACTOR=0.1)

    def fresh():
        optimizer = build_optimizer(cfg, nn.Linear(2, 2))
        return optimizer, build_lr_scheduler(cfg, optimizer, iters_per_epoch=3)

    optimizer, scheduler = fresh()
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    optimizer2, scheduler2 = fresh()
    scheduler2.load_state_dict(state)
    assert scheduler2.last_epoch == 4
    for _ in range(3):  # iterations 5, 6 (first decayed one), 7
        optimizer.step(), scheduler.step()
        optimizer2.step(), scheduler2.step()
        assert scheduler2.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert scheduler2.get_last_lr()[0] == pytest.approx(0.1)


@pytest.mark.parametrize("changes, message", [
    (dict(SCHED="StepLR"), r"unknown LR schedule \(SOLVER.SCHED\) 'StepLR'"),
    (dict(WARMUP_METHOD="linaer"), r"unknown warmup method .* did you mean 'linear'"),
    (dict(STEPS=[40, 20]), r"SOLVER.STEPS must be increasing epochs, got \[40, 20\]"),
    (dict(SCHED="CosineAnnealingLR", DELAY_EPOCHS=5, MAX_EPOCH=5),
     r"SOLVER.DELAY_EPOCHS \(5\) must be below SOLVER.MAX_EPOCH \(5\)"),
])
def test_schedule_config_errors(changes, message):
    cfg = solver_cfg(**changes)
    optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    with pytest.raises(ReidError, match=message):
        build_lr_scheduler(cfg, optimizer, iters_per_epoch=10)


def test_empty_epoch_is_a_user_error():
    cfg = solver_cfg()
    optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    with pytest.raises(ReidError, match="an epoch needs at least one iteration"):
        build_lr_scheduler(cfg, optimizer, iters_per_epoch=0)
