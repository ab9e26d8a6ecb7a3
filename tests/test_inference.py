"""reid.load_model: FastReID-style checkpoints load strictly; mismatches are named; features."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import reid
from reid.config import load_config
from reid.errors import ReidError
from reid.inference import build_inference_model, load_model
from toys import TINY_SIZE, randomised_state, save_fastreid_style, write_config


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
    images = torch.rand(3, 3, *TINY_SIZE, generator=torch.Generator().manual_seed(1)) * 255
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
