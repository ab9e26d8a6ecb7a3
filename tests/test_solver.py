"""Solver: optimizer parameter groups (LR and weight decay per parameter,
SOLVER.WEIGHT_DECAY_NORM), the LR schedule as FastReID 1.4 runs it, and SOLVER.CLIP_GRADIENTS
in the trainer."""
import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from reid.config import load_config
from reid.engine.trainer import GradientClipper, Trainer, build_gradient_clipper
from reid.errors import ReidError
from reid.solver import build_lr_scheduler, build_optimizer
from conftest import recipe_files
from toys import solver_cfg


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


# ------------------------------------------------------ parameter groups: SOLVER.WEIGHT_DECAY_NORM

PARAMS = Path(__file__).resolve().parents[1] / "params"


class NormNet(nn.Module):
    """One of each kind of layer whose parameters the groups must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4),
                                      nn.InstanceNorm2d(4, affine=True))
        self.neck = nn.LayerNorm(4)
        self.heads = nn.Linear(4, 2, bias=False)


def weight_decays(cfg, model):
    return {g["name"]: g["weight_decay"] for g in build_optimizer(cfg, model).param_groups}


def test_norm_layers_take_weight_decay_norm_and_biases_weight_decay_bias():
    cfg = solver_cfg(WEIGHT_DECAY=1e-3, WEIGHT_DECAY_NORM=0.0, WEIGHT_DECAY_BIAS=1e-5)
    expected = {
        "backbone.0.weight": 1e-3, "backbone.0.bias": 1e-5,   # conv
        "backbone.1.weight": 0.0, "backbone.1.bias": 1e-5,    # batch norm
        "backbone.2.weight": 0.0, "backbone.2.bias": 1e-5,    # group norm
        "backbone.3.weight": 0.0, "backbone.3.bias": 1e-5,    # instance norm
        "neck.weight": 0.0, "neck.bias": 1e-5,                # layer norm
        "heads.weight": 1e-3,
    }
    assert weight_decays(cfg, NormNet()) == pytest.approx(expected)


def test_norm_layers_inside_a_wrapper_are_found():
    wrapped = nn.ModuleDict({"inner": NormNet()})
    cfg = solver_cfg(WEIGHT_DECAY=1e-3, WEIGHT_DECAY_NORM=2e-4, WEIGHT_DECAY_BIAS=1e-5)
    got = weight_decays(cfg, wrapped)
    assert got["inner.backbone.1.weight"] == pytest.approx(2e-4)
    assert got["inner.backbone.0.weight"] == pytest.approx(1e-3)


RECIPES = [str(p.relative_to(PARAMS)) for p in recipe_files()]


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipes_keep_their_weight_decay(recipe):
    # Before WEIGHT_DECAY_NORM existed, every weight took WEIGHT_DECAY and every bias
    # WEIGHT_DECAY_BIAS: the project's recipes must train exactly as before.
    cfg = load_config(PARAMS / recipe)
    solver = cfg.SOLVER
    expected = {name: solver.WEIGHT_DECAY_BIAS if name.endswith("bias") else solver.WEIGHT_DECAY
                for name, _ in NormNet().named_parameters()}
    assert weight_decays(cfg, NormNet()) == pytest.approx(expected)


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
    # 3 iterations per epoch, 4 warm-up iterations: the warm-up ends in epoch 1, so FastReID's
    # per-epoch main schedule first steps at the end of epoch 1 and its milestones (epochs 2
    # and 4 of the main schedule) fall at epochs 3 and 5 = iterations 9 and 15.
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=1.0, BIAS_LR_FACTOR=3.0, STEPS=[2, 4],
                     GAMMA=0.1, WARMUP_METHOD="linear", WARMUP_ITERS=4, WARMUP_FACTOR=0.2)
    lrs = lrs_per_iteration(cfg, iters_per_epoch=3, count=18)
    expected_weight = ([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
                       + [0.1] * 6 + [0.01] * 3)
    assert [w for w, _ in lrs] == pytest.approx(expected_weight)
    assert [b for _, b in lrs] == pytest.approx([3 * v for v in expected_weight])


def test_constant_warmup():
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=0.5, STEPS=[10], WARMUP_METHOD="constant",
                     WARMUP_ITERS=3, WARMUP_FACTOR=0.1)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=2, count=5)]
    assert lrs == pytest.approx([0.05, 0.05, 0.05, 0.5, 0.5])


def test_the_main_schedule_starts_after_the_warmup():
    # Warm-up of 8 iterations, 3 per epoch: it ends in epoch 2, so the milestone "epoch 2"
    # is reached at epoch 2 + 2 = 4 (iteration 12); the warm-up never scales a decayed LR.
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=1.0, STEPS=[2], GAMMA=0.1,
                     WARMUP_METHOD="linear", WARMUP_ITERS=8, WARMUP_FACTOR=0.5)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=3, count=13)]
    assert lrs[5] == pytest.approx(0.8125)       # 0.5 * 3/8 + 5/8
    assert lrs[7] == pytest.approx(0.9375)       # 0.5 * 1/8 + 7/8
    assert lrs[8:12] == pytest.approx([1.0] * 4)
    assert lrs[12] == pytest.approx(0.1)


def test_a_warmup_ending_on_an_epoch_boundary_starts_the_main_schedule_there():
    # 6 warm-up iterations = 2 whole epochs of 3: the main schedule steps after epoch 1, so
    # milestone 1 is reached at epoch 2, the first iteration after the warm-up.
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=1.0, STEPS=[1], GAMMA=0.1,
                     WARMUP_METHOD="constant", WARMUP_ITERS=6, WARMUP_FACTOR=0.5)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=3, count=8)]
    assert lrs == pytest.approx([0.5] * 6 + [0.1] * 2)


def test_delay_epochs_hold_the_multistep_schedule_back():
    # No warm-up, DELAY_EPOCHS 2: the main schedule first steps after epoch 2.
    cfg = solver_cfg(SCHED="MultiStepLR", BASE_LR=1.0, STEPS=[1], GAMMA=0.1, WARMUP_ITERS=0,
                     DELAY_EPOCHS=2)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=3, count=12)]
    assert lrs == pytest.approx([1.0] * 9 + [0.1] * 3)


def test_cosine_with_delay():
    # 4 iterations per epoch, DELAY_EPOCHS 1, MAX_EPOCH 3: the cosine has 3 - 1 = 2 epochs and
    # steps per epoch from the end of epoch 1: 1.0 for epochs 0-1, half way in epoch 2, then
    # ETA_MIN_LR.
    cfg = solver_cfg(SCHED="CosineAnnealingLR", BASE_LR=1.0, DELAY_EPOCHS=1, MAX_EPOCH=3,
                     ETA_MIN_LR=0.01, WARMUP_ITERS=0)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=4, count=14)]
    assert lrs[:8] == pytest.approx([1.0] * 8)
    assert lrs[8:12] == pytest.approx([0.505] * 4)   # 0.01 + 0.99 * (1 + cos(pi/2)) / 2
    assert lrs[12:] == pytest.approx([0.01] * 2)


def test_cosine_after_a_warmup_is_shortened_by_the_warmup_epochs():
    # 5 warm-up iterations over 4-iteration epochs span 2 epochs: the cosine gets
    # MAX_EPOCH - 2 = 2 epochs and starts stepping after epoch 1.
    cfg = solver_cfg(SCHED="CosineAnnealingLR", BASE_LR=1.0, MAX_EPOCH=4, ETA_MIN_LR=0.0,
                     WARMUP_METHOD="constant", WARMUP_ITERS=5, WARMUP_FACTOR=0.1)
    lrs = [w for w, _ in lrs_per_iteration(cfg, iters_per_epoch=4, count=16)]
    assert lrs == pytest.approx([0.1] * 5 + [1.0] * 3 + [0.5] * 4 + [0.0] * 4)


def reference_lrs(solver, iters_per_epoch, count):
    """FastReID 1.4's scheme rebuilt from torch's own schedulers: the main one (MultiStepLR
    or CosineAnnealingLR with T_max = MAX_EPOCH - max(ceil(WARMUP_ITERS / iters_per_epoch),
    DELAY_EPOCHS)) stepped after an epoch once ``iteration + 1 > WARMUP_ITERS`` and
    ``epoch + 1 > DELAY_EPOCHS``, a linear warm-up (LambdaLR) stepped after each iteration
    while ``iteration + 1 <= WARMUP_ITERS``."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=solver["BASE_LR"])
    if solver["SCHED"] == "MultiStepLR":
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, solver["STEPS"], solver["GAMMA"])
    else:
        t_max = solver["MAX_EPOCH"] - max(math.ceil(solver["WARMUP_ITERS"] / iters_per_epoch),
                                          solver["DELAY_EPOCHS"])
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t_max, solver["ETA_MIN_LR"])
    warmup_iters, factor = solver["WARMUP_ITERS"], solver["WARMUP_FACTOR"]
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 1.0 if it >= warmup_iters else
        factor * (1 - it / warmup_iters) + it / warmup_iters)
    lrs = []
    for it in range(count):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if it + 1 <= warmup_iters:
            warmup.step()
        if (it + 1) % iters_per_epoch == 0 and it + 2 > warmup_iters \
                and (it + 1) // iters_per_epoch > solver["DELAY_EPOCHS"]:
            main.step()
    return lrs


@pytest.mark.parametrize("solver, iters_per_epoch", [
    (dict(SCHED="MultiStepLR", STEPS=[20, 27], WARMUP_ITERS=100, DELAY_EPOCHS=0), 18),
    (dict(SCHED="MultiStepLR", STEPS=[40, 90], WARMUP_ITERS=2000, DELAY_EPOCHS=0), 202),
    (dict(SCHED="MultiStepLR", STEPS=[3, 5], WARMUP_ITERS=20, DELAY_EPOCHS=0), 10),
    (dict(SCHED="MultiStepLR", STEPS=[2, 6], WARMUP_ITERS=7, DELAY_EPOCHS=4), 5),
    (dict(SCHED="CosineAnnealingLR", STEPS=[1], WARMUP_ITERS=100, DELAY_EPOCHS=0), 18),
    (dict(SCHED="CosineAnnealingLR", STEPS=[1], WARMUP_ITERS=2000, DELAY_EPOCHS=30), 202),
    (dict(SCHED="CosineAnnealingLR", STEPS=[1], WARMUP_ITERS=0, DELAY_EPOCHS=0), 7),
])
def test_schedules_follow_fastreids_two_schedulers(solver, iters_per_epoch):
    solver = dict(solver, BASE_LR=0.00035, GAMMA=0.1, MAX_EPOCH=40 if iters_per_epoch < 100
                  else 60, ETA_MIN_LR=1e-7, WARMUP_FACTOR=0.1, WARMUP_METHOD="linear")
    cfg = solver_cfg(**solver)
    count = solver["MAX_EPOCH"] * iters_per_epoch
    ours = [w for (w,) in lrs_per_iteration_one_group(cfg, iters_per_epoch, count)]
    assert ours == pytest.approx(reference_lrs(solver, iters_per_epoch, count), rel=1e-9)


def lrs_per_iteration_one_group(cfg, iters_per_epoch, count):
    optimizer = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    lrs = []
    for _ in range(count):
        lrs.append(tuple(g["lr"] for g in optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    return lrs


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
    # iterations 5..10; the warm-up ends in epoch 1, so milestone 2 falls at epoch 3 (iteration 9)
    for _ in range(6):
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


def test_the_embedded_default_still_decays_at_epochs_8_and_11():
    # params/synthetic.yml (make run): 1,200 training images = 18 iterations per epoch, 20
    # warm-up iterations (ending in epoch 1). Since issue 11 the main schedule counts its
    # epochs from there, as FastReID's does, so STEPS [7, 10] keep the decays at epochs 8 and
    # 11 (iterations 144 and 198), where they were with STEPS [8, 11] before.
    cfg = load_config(PARAMS / "synthetic.yml")
    optimizer = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch=18)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_EPOCH * 18):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    drops = [i for i in range(21, len(lrs)) if lrs[i] < lrs[i - 1]]
    assert drops == [144, 198]
    assert lrs[143] == pytest.approx(3.5e-4) and lrs[-1] == pytest.approx(3.5e-6)


# ----------------------------------------------------------------------------- clipping

def with_grads(*grads):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def manual_norm_clip(grad, max_norm, p):
    """Each parameter's gradient scaled by max_norm / (norm + 1e-6) when that is below 1."""
    norm = grad.abs().max() if math.isinf(p) else grad.abs().pow(p).sum().pow(1 / p)
    return grad * min(1.0, max_norm / (float(norm) + 1e-6))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_norm_clipping_is_per_parameter(norm_type):
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([[0.1, -0.2], [0.05, 0.0]]),
             torch.tensor([-30.0, 0.0, 40.0])]
    params = with_grads(*grads)
    params.append(nn.Parameter(torch.ones(2)))  # no gradient: left alone
    GradientClipper("norm", clip_value=1.0, norm_type=norm_type)(params)
    for param, grad in zip(params, grads):
        assert torch.allclose(param.grad, manual_norm_clip(grad, 1.0, norm_type), atol=1e-6)
        assert float(torch.linalg.vector_norm(param.grad, ord=norm_type)) <= 1.0 + 1e-5
    assert params[-1].grad is None
    assert torch.equal(params[1].grad, grads[1])  # below the bound: unchanged


def test_value_clipping_clamps_every_element():
    grad = torch.tensor([-7.0, -0.5, 0.0, 2.5, 9.0])
    (param,) = with_grads(grad)
    GradientClipper("value", clip_value=2.0)(param for param in [param])
    assert param.grad.tolist() == [-2.0, -0.5, 0.0, 2.0, 2.0]


@pytest.mark.parametrize("args, message", [
    (("l2", 1.0, 2.0), "CLIP_TYPE must be one of value, norm; got 'l2'"),
    (("norm", 0.0, 2.0), "CLIP_VALUE must be > 0; got 0.0"),
    (("norm", 1.0, -1.0), "NORM_TYPE must be > 0"),
])
def test_clipper_settings_errors(args, message):
    with pytest.raises(ReidError, match=message):
        GradientClipper(*args)


def test_clipper_from_config():
    assert build_gradient_clipper(load_config().SOLVER.CLIP_GRADIENTS) is None
    cfg = load_config(None, ["SOLVER.CLIP_GRADIENTS.ENABLED", "True",
                             "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value",
                             "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.5"])
    clipper = build_gradient_clipper(cfg.SOLVER.CLIP_GRADIENTS)
    assert (clipper.clip_type, clipper.clip_value, clipper.norm_type) == ("value", 0.5, 2.0)


class Steep(nn.Module):
    """loss = 100 * sum(w * x): the gradient of w is 100 * x, far above the clip norm."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        x = batch["images"]
        return {"loss": 100 * (self.w * x).sum() + 0.1 * self.b.sum()}


def run_one_step(clipper, loss_scale=None):
    """One plain SGD step (lr 1, no momentum or decay) of ``Steep``; with ``loss_scale`` the
    trainer's scaler multiplies the loss as AMP does."""
    model = Steep()
    cfg = solver_cfg(OPT="SGD", BASE_LR=1.0, MOMENTUM=0.0, NESTEROV=False, WEIGHT_DECAY=0.0,
                     WEIGHT_DECAY_BIAS=0.0, WEIGHT_DECAY_NORM=0.0, WARMUP_ITERS=0)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch=1)
    batch = {"images": torch.tensor([0.3, -0.4, 1.2]), "targets": torch.zeros(1)}
    trainer = Trainer(model, [batch], optimizer, scheduler, max_epoch=1, iters_per_epoch=1,
                      device="cpu", grad_clipper=clipper)
    if loss_scale is not None:
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale, enabled=True)
    trainer.train()
    return model


def test_trainer_clips_before_the_optimizer_step():
    # SGD with lr 1 and no momentum / decay: the update is minus the (clipped) gradient.
    raw = 100 * torch.tensor([0.3, -0.4, 1.2])                  # |raw| = 130
    unclipped = run_one_step(None)
    assert torch.allclose(unclipped.w.detach(), -raw)
    clipped = run_one_step(GradientClipper("norm", clip_value=2.0))
    expected = -raw * (2.0 / (130.0 + 1e-6))
    assert torch.allclose(clipped.w.detach(), expected, atol=1e-6)
    assert float(clipped.w.detach().norm()) <= 2.0 + 1e-5
    assert torch.allclose(clipped.b.detach(), torch.tensor([-0.1]))  # below the bound: as is


def test_with_loss_scaling_the_true_gradient_is_clipped():
    # A loss scaler (as AMP uses) multiplies the gradients by 1024; clipping must see them
    # unscaled, so the step is the same as without scaling.
    model = run_one_step(GradientClipper("norm", clip_value=2.0), loss_scale=1024.0)
    expected = -100 * torch.tensor([0.3, -0.4, 1.2]) * (2.0 / (130.0 + 1e-6))
    assert torch.allclose(model.w.detach(), expected, atol=1e-6)
