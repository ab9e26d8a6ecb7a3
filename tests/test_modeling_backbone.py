"""ResNet backbone: shapes, torchvision/FastReID key names, ImageNet weights without network."""
import logging
import socket
from pathlib import Path

import pytest
import torch
import torchvision

from reid.errors import ReidError
from reid.modeling import build_backbone, wants_sync_bn
from reid.modeling.backbones import pretrained
from toys import backbone_cfg, error_message

pytestmark = pytest.mark.usefixtures("one_thread")

FEAT_DIMS = {"18x": 512, "34x": 512, "50x": 2048}


def make_cfg(depth="18x", **backbone):
    return backbone_cfg(**{"DEPTH": depth, "FEAT_DIM": FEAT_DIMS.get(depth, 512), **backbone})


# 64 x 32 input: stride 16 (LAST_STRIDE 1) -> 4 x 2 map, stride 32 (LAST_STRIDE 2) -> 2 x 1
@pytest.mark.parametrize("depth, last_stride, grid", [
    ("18x", 1, (4, 2)), ("18x", 2, (2, 1)), ("34x", 1, (4, 2)), ("50x", 2, (2, 1))])
def test_output_shape(depth, last_stride, grid):
    backbone = build_backbone(make_cfg(depth, LAST_STRIDE=last_stride)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 32))
    assert backbone.out_channels == FEAT_DIMS[depth]
    assert out.shape == (2, FEAT_DIMS[depth], *grid)


def test_depth_without_x_is_accepted():
    assert build_backbone(make_cfg("18")).out_channels == 512


def test_unknown_depth_lists_choices():
    with pytest.raises(ReidError, match=r"MODEL.BACKBONE.DEPTH '20x' is not a ResNet depth; "
                                        r"expected one of 18x, 34x, 50x, 101x"):
        build_backbone(make_cfg("20x"))



@pytest.mark.parametrize("depth, tv_builder", [("18x", torchvision.models.resnet18),
                                               ("50x", torchvision.models.resnet50)])
def test_state_dict_matches_torchvision_without_fc(depth, tv_builder):
    ours = build_backbone(make_cfg(depth)).state_dict()
    reference = {k: v.shape for k, v in tv_builder(weights=None).state_dict().items()
                 if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == reference


def test_feat_dim_mismatch_tells_the_value_to_set():
    assert error_message(build_backbone, make_cfg("18x", FEAT_DIM=2048)) == (
        "MODEL.BACKBONE.FEAT_DIM is 2048 but resnet 18x outputs 512 channels; "
        "set MODEL.BACKBONE.FEAT_DIM 512")


def test_sync_bn_builds_plain_bn_and_is_flagged():
    cfg = make_cfg(NORM="syncBN")
    backbone = build_backbone(cfg)
    assert type(backbone.bn1) is torch.nn.BatchNorm2d
    assert wants_sync_bn(cfg) and not wants_sync_bn(make_cfg())


# --- ImageNet weights -------------------------------------------------------------------------

def torchvision_file(tmp_path, name="weights.pth", wrap=None):
    """A torchvision resnet18 state dict (fc included) saved to disk, and the saved tensors."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(state) if wrap else state, path)
    return path, state


def assert_loaded(backbone, state):
    ours = backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key


def test_pretrain_path_loads_torchvision_weights_and_drops_fc(offline, tmp_path):
    path, state = torchvision_file(tmp_path)
    backbone = build_backbone(make_cfg(PRETRAIN=True, PRETRAIN_PATH=str(path)))
    assert_loaded(backbone, state)
    assert not any(k.startswith("fc.") for k in backbone.state_dict())


def test_pretrain_path_accepts_a_fastreid_checkpoint(offline, tmp_path):
    path, state = torchvision_file(
        tmp_path, wrap=lambda s: {"model": {f"backbone.{k}": v for k, v in s.items()}})
    assert_loaded(build_backbone(make_cfg(PRETRAIN=True, PRETRAIN_PATH=str(path))), state)


def test_missing_pretrain_path_is_an_error(offline, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ReidError, match=rf"MODEL.BACKBONE.PRETRAIN_PATH {missing} does not exist"):
        build_backbone(make_cfg(PRETRAIN=True, PRETRAIN_PATH=str(missing)))


def test_weights_of_another_depth_are_an_error(offline, tmp_path):
    path, _ = torchvision_file(tmp_path)
    cfg = make_cfg("50x", PRETRAIN=True, PRETRAIN_PATH=str(path))
    with pytest.raises(ReidError, match=r"weights in .*weights.pth do not fit this backbone"):
        build_backbone(cfg)


def test_weights_come_from_the_torch_hub_cache(offline):
    name = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    _, state = torchvision_file(offline / "checkpoints", name=name)
    assert_loaded(build_backbone(make_cfg(PRETRAIN=True)), state)


def test_no_weights_anywhere_warns_and_trains_from_scratch(offline, caplog):
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(make_cfg(PRETRAIN=True))
    assert "training from scratch" in caplog.text
    assert "network disabled in tests" in caplog.text
    assert backbone.out_channels == 512


def test_download_uses_a_short_socket_timeout_and_restores_it(monkeypatch, tmp_path):
    seen = {}

    def fake_download(url, dst, progress=True):
        seen["timeout"] = socket.getdefaulttimeout()
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    before = socket.getdefaulttimeout()
    with pytest.raises(OSError):
        pretrained.download("https://example.invalid/w.pth", tmp_path / "w.pth", timeout_s=3.0)
    assert seen["timeout"] == 3.0
    assert socket.getdefaulttimeout() == before


def test_unknown_backbone_names_the_closest_and_the_timm_form():
    message = error_message(lambda: build_backbone(backbone_cfg(NAME="build_resnet50")))
    assert message.startswith("unknown backbone 'build_resnet50'; "
                              "did you mean 'build_resnet_backbone'?")
    assert message.endswith("or any timm model as 'timm:<model name>'")
