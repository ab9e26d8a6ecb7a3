"""Training speed options (issue 16): SOLVER.FUSED (torch's fused optimizers) and
SOLVER.CHANNELS_LAST (the model trained in the channels_last memory format) make the same
training as the defaults within float rounding; an optimizer without a fused implementation is
refused in one line."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import RECIPE, TINY_DATA, TINY_TRAIN, as_overrides
from reid import stages
from reid.config import load_config
from reid.errors import ReidError
from reid.solver import build_optimizer
from reid.utils.events import read_metrics
from toys import solver_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def three_steps(opt: str, fused: bool) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    model = conv_model()
    optimizer = build_optimizer(solver_cfg(OPT=opt, BASE_LR=0.01, WEIGHT_DECAY=5e-4,
                                           FUSED=fused), model)
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        optimizer.zero_grad()
        model(images).pow(2).mean().backward()
        optimizer.step()
    return optimizer, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("opt", ["Adam", "AdamW", "SGD"])
def test_a_fused_optimizer_makes_the_default_update(opt):
    plain, expected = three_steps(opt, fused=False)
    fused, params = three_steps(opt, fused=True)
    assert not plain.defaults["fused"] and fused.defaults["fused"]
    for got, want in zip(params, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_an_optimizer_without_a_fused_implementation_is_refused():
    with pytest.raises(ReidError) as error:
        build_optimizer(solver_cfg(OPT="RMSprop", FUSED=True), conv_model())
    assert str(error.value) == ("SOLVER.FUSED True: SOLVER.OPT RMSprop has no fused "
                                "implementation; set SOLVER.FUSED False or use one of "
                                "Adagrad, Adam, AdamW, SGD")


def test_channels_last_training_follows_the_default(tiny_root, tmp_path, monkeypatch):
    formats = []
    trainer_class = stages.Trainer

    def recording_trainer(model, *args, **kwargs):
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        formats.append(conv.weight.is_contiguous(memory_format=torch.channels_last)
                       and not conv.weight.is_contiguous())
        return trainer_class(model, *args, **kwargs)

    monkeypatch.setattr(stages, "Trainer", recording_trainer)
    losses = []
    for channels_last in (False, True):
        output = tmp_path / str(channels_last)
        stages.train(load_config(str(RECIPE), as_overrides({
            **TINY_DATA, **TINY_TRAIN, "DATASETS.ROOT": str(tiny_root),
            "OUTPUT_DIR": str(output), "SOLVER.MAX_EPOCH": 1, "SOLVER.CHECKPOINT_PERIOD": 0,
            "TEST.EVAL_PERIOD": 0, "SOLVER.CHANNELS_LAST": channels_last})))
        losses.append([row["total_loss"] for row in read_metrics(output / "metrics.json")
                       if "total_loss" in row])
    assert formats == [False, True]
    assert len(losses[0]) >= 2
    # Other convolution kernels round otherwise; Adam's first steps amplify that (1.4e-4 seen)
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-3,
                               atol=1e-4)
