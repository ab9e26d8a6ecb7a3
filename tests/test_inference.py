"""reid.load_model: FastReID-style checkpoints load strictly; mismatches are named; features."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reid
from conftest import as_yaml
from reid.config import load_config
from reid.errors import ReidError
from reid.inference import build_inference_model, load_model
from reid.modeling import BACKBONE_REGISTRY, build_model

TINY_BACKBONE = "build_tiny_inference_test_backbone"
SIZE = (32, 16)


class TinyBackbone(nn.Module):
    """conv 3x3 stride 2 -> BN -> ReLU: small enough to recompute by hand below."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


if TINY_BACKBONE not in BACKBONE_REGISTRY:
    BACKBONE_REGISTRY.register(lambda cfg: TinyBackbone(cfg.MODEL.BACKBONE.FEAT_DIM),
                               name=TINY_BACKBONE)

TINY_CONFIG = {
    "MODEL.DEVICE": "cpu",
    "MODEL.BACKBONE.NAME": TINY_BACKBONE,
    "MODEL.BACKBONE.FEAT_DIM": 8,
    "MODEL.BACKBONE.PRETRAIN": False,
    "MODEL.HEADS.NUM_CLASSES": 0,
    "INPUT.SIZE_TEST": list(SIZE),
    "DATALOADER.NUM_WORKERS": 0,
}


def write_config(path: Path, extra: dict | None = None) -> Path:
    path.write_text(as_yaml({**TINY_CONFIG, **(extra or {})}))
    return path


def randomised_state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    """A trained-looking state of the tiny model (not the values a fresh build starts with)."""
    cfg = load_config(None, ["MODEL.BACKBONE.NAME", TINY_BACKBONE, "MODEL.BACKBONE.FEAT_DIM", "8",
                             "MODEL.BACKBONE.PRETRAIN", "False",
                             "MODEL.HEADS.NUM_CLASSES", str(num_classes)])
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in build_model(cfg).state_dict().items():
        if value.is_floating_point():
            value = torch.rand(value.shape, generator=generator) + 0.5  # positive: valid var
        state[key] = value
    return state


def save_fastreid_style(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """As FastReID's trainer saves a DistributedDataParallel model, pixel statistics included."""
    model = {f"module.{key}": value for key, value in state.items()}
    model["module.pixel_mean"] = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    torch.save({"model": model, "iteration": 1234, "optimizer": {}}, path)
    return path


@pytest.fixture
def setup(tmp_path):
    torch.set_num_threads(1)
    state = randomised_state()
    return (write_config(tmp_path / "tiny.yml"), save_fastreid_style(tmp_path / "w.pth", state),
            state)


def by_hand(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The eval feature recomputed from the state: normalise, conv, BN, ReLU, mean, BNNeck."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    x = F.conv2d((images - mean) / std, state["backbone.conv.weight"], stride=2, padding=1)
    x = F.batch_norm(x, state["backbone.bn.running_mean"], state["backbone.bn.running_var"],
                     state["backbone.bn.weight"], state["backbone.bn.bias"], eps=1e-5)
    pooled = torch.relu(x).mean(dim=(2, 3))
    neck = "heads.bottleneck.0."
    return F.batch_norm(pooled, state[neck + "running_mean"], state[neck + "running_var"],
                        state[neck + "weight"], state[neck + "bias"], eps=1e-5)


def test_fastreid_checkpoint_loads_every_key_and_gives_eval_features(setup):
    config, weights, state = setup
    model = load_model(config, weights)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)  # nothing missing, nothing left over
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert model.heads.weight.shape == (5, 8)  # NUM_CLASSES 0 in the config: the checkpoint's
    images = torch.rand(3, 3, *SIZE, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        features = model(images)
    assert features.shape == (3, 8)
    torch.testing.assert_close(features, by_hand(state, images), rtol=1e-4, atol=1e-4)


def test_public_name_and_config_weights(setup, tmp_path):
    config, weights, state = setup
    assert reid.load_model is load_model
    # No weights argument: MODEL.WEIGHTS of the config (overrides apply) names them.
    model = reid.load_model(config, overrides=["MODEL.WEIGHTS", str(weights)])
    assert torch.equal(model.state_dict()["backbone.conv.weight"], state["backbone.conv.weight"])


def test_shape_mismatch_is_an_error_naming_the_key(setup, tmp_path):
    config, _, state = setup
    state["heads.bottleneck.0.weight"] = torch.ones(7)
    weights = save_fastreid_style(tmp_path / "bad.pth", state)
    with pytest.raises(ReidError) as err:
        load_model(config, weights)
    message = str(err.value)
    assert "\n" not in message
    assert f"checkpoint {weights} does not fit" in message
    assert "shape mismatch heads.bottleneck.0.weight (checkpoint 7, model 8)" in message


def test_missing_and_unexpected_keys_are_named(setup, tmp_path):
    config, _, state = setup
    del state["backbone.conv.weight"]
    state["backbone.extra.weight"] = torch.ones(2)
    weights = save_fastreid_style(tmp_path / "other.pth", state)
    with pytest.raises(ReidError, match=r"missing backbone\.conv\.weight; "
                                        r"unexpected backbone\.extra\.weight"):
        load_model(config, weights)


def test_not_strict_loads_what_fits(setup, tmp_path, caplog):
    config, _, state = setup
    state["heads.bottleneck.0.weight"] = torch.ones(7)
    weights = save_fastreid_style(tmp_path / "bad.pth", state)
    model = load_model(config, weights, strict=False)
    assert torch.equal(model.state_dict()["backbone.conv.weight"], state["backbone.conv.weight"])
    assert torch.equal(model.heads.bottleneck[0].weight, torch.ones(8))  # left as initialised
    assert "skipping heads.bottleneck.0.weight" in caplog.text


def test_checkpoint_without_classifier_loads(setup, tmp_path):
    config, _, state = setup
    del state["heads.weight"]  # an export for retrieval only
    model = load_model(config, save_fastreid_style(tmp_path / "export.pth", state))
    assert model.heads.weight.shape == (1, 8)  # NUM_CLASSES 0 -> a 1-class placeholder
    assert torch.equal(model.state_dict()["backbone.bn.running_var"],
                       state["backbone.bn.running_var"])


def test_distiller_config_builds_the_plain_student(setup):
    config, weights, _ = setup
    cfg = load_config(config, ["MODEL.META_ARCHITECTURE", "Distiller"])
    model = build_inference_model(cfg, weights)  # no teacher needed (KD.* empty)
    assert type(model).__name__ == "Baseline" and not model.training


def test_stages_load_model_is_strict_too(setup, tmp_path):
    from reid import stages
    config, _, state = setup
    state["heads.bottleneck.0.bias"] = torch.ones(3)
    weights = save_fastreid_style(tmp_path / "bad.pth", state)
    with pytest.raises(ReidError, match="heads.bottleneck.0.bias"):
        stages.load_model(load_config(config), weights, torch.device("cpu"))
