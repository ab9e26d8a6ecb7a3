"""SOLVER.WEIGHT_DECAY_NORM in the parameter groups and SOLVER.CLIP_GRADIENTS in the trainer."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from reid.config import load_config
from reid.engine.trainer import GradientClipper, Trainer, build_gradient_clipper
from reid.errors import ReidError
from reid.solver import build_lr_scheduler, build_optimizer
from toys import solver_cfg

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


RECIPES = sorted(str(p.relative_to(PARAMS)) for p in PARAMS.rglob("*.yml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipes_keep_their_weight_decay(recipe):
    # Before WEIGHT_DECAY_NORM existed, every weight took WEIGHT_DECAY and every bias
    # WEIGHT_DECAY_BIAS: the project's recipes must train exactly as before.
    cfg = load_config(PARAMS / recipe)
    solver = cfg.SOLVER
    expected = {name: solver.WEIGHT_DECAY_BIAS if name.endswith("bias") else solver.WEIGHT_DECAY
                for name, _ in NormNet().named_parameters()}
    assert weight_decays(cfg, NormNet()) == pytest.approx(expected)


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
