"""Baseline model: FastReID key names, normalisation inside the model, losses, a training step."""
import pytest
import torch

from reid.errors import ReidError
from reid.modeling import Baseline, build_model
from toys import backbone_cfg, identity_batch

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 4


def make_cfg(**model):
    cfg = backbone_cfg(DEPTH="18x", FEAT_DIM=512)
    cfg.MODEL.HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    cfg.MODEL.update(model)
    return cfg


def make_batch(seed=0):
    return identity_batch(NUM_CLASSES, seed=seed)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(make_cfg())


def test_state_dict_uses_fastreid_key_names(model):
    keys = set(model.state_dict())
    expected = {"backbone.conv1.weight", "backbone.bn1.running_mean",
                "backbone.layer4.1.bn2.running_var", "backbone.layer2.0.downsample.0.weight",
                "heads.bottleneck.0.weight", "heads.bottleneck.0.bias", "heads.weight"}
    assert expected <= keys
    assert not any(k.startswith(("backbone.fc", "pixel_", "loss")) for k in keys)
    assert model.heads.weight.shape == (NUM_CLASSES, 512)


def test_pixel_statistics_are_buffers_from_the_config(model):
    cfg = make_cfg()
    assert model.pixel_mean.shape == (1, 3, 1, 1) and model.pixel_std.shape == (1, 3, 1, 1)
    assert model.pixel_mean.flatten().tolist() == pytest.approx(cfg.MODEL.PIXEL_MEAN)
    assert model.pixel_std.flatten().tolist() == pytest.approx(cfg.MODEL.PIXEL_STD)


def test_eval_normalises_0_255_images_and_accepts_dict_or_tensor(model):
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        from_dict = model(batch)
        from_tensor = model(batch["images"])
        mean = torch.tensor(make_cfg().MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(make_cfg().MODEL.PIXEL_STD).view(1, 3, 1, 1)
        by_hand = model.heads(model.backbone((batch["images"] - mean) / std))
    assert from_dict.shape == (8, 512)
    assert torch.equal(from_dict, from_tensor)
    assert torch.allclose(from_dict, by_hand, atol=1e-5)


def test_training_returns_every_configured_loss(model):
    model.train()
    losses = model(make_batch())
    assert set(losses) == {"loss_cls", "loss_triplet"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_training_without_targets_is_a_clear_error(model):
    model.train()
    batch = make_batch()
    for bad in (batch["images"], {"images": batch["images"]}):
        with pytest.raises(ReidError, match=r"training forward needs a batch dict with 'targets'"):
            model(bad)


def test_a_checkpoint_round_trips_into_a_fresh_model(model, tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    fresh = build_model(make_cfg())
    fresh.load_state_dict(torch.load(path, weights_only=True)["model"])
    model.eval(), fresh.eval()
    images = make_batch()["images"]
    with torch.no_grad():
        assert torch.equal(model(images), fresh(images))


def test_a_fastreid_checkpoint_with_pixel_statistics_loads_strictly(model):
    state = dict(model.state_dict())
    state["pixel_mean"] = torch.zeros(1, 3, 1, 1)
    state["pixel_std"] = torch.ones(1, 3, 1, 1)
    fresh = build_model(make_cfg())
    fresh.load_state_dict(state)  # strict
    # the config's normalisation wins over the checkpoint's
    assert fresh.pixel_mean.flatten().tolist() == pytest.approx(make_cfg().MODEL.PIXEL_MEAN)
    assert "pixel_mean" in state  # the caller's dict is left as it was


def test_unknown_meta_architecture_suggests_the_closest():
    with pytest.raises(ReidError,
                       match=r"unknown meta-architecture 'baseline'; did you mean 'Baseline'"):
        build_model(make_cfg(META_ARCHITECTURE="baseline"))


def test_pixel_mean_needs_three_values():
    with pytest.raises(ReidError, match=r"MODEL.PIXEL_MEAN must hold 3 values"):
        Baseline(make_cfg(PIXEL_MEAN=[0.5, 0.5]))


def test_loss_decreases_over_sgd_steps_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(make_cfg()).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                lr=0.01, momentum=0.9)
    batch = make_batch(seed=1)
    history = []
    for _ in range(20):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history


# --- freezing ----------------------------------------------------------------------------------
