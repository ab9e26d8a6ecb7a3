"""OSNet, MobileNetV2/V3 and ShuffleNetV2 backbones: FastReID names, shapes, parameter counts."""
import logging

import pytest
import torch
import torchvision
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import build_backbone
from reid.modeling.backbones import mobilenetv2, mobilenetv3, osnet, shufflenetv2  # noqa: F401
from toys import backbone_cfg, error_message, num_params

pytestmark = pytest.mark.usefixtures("one_thread")

OSNET, MNV2, MNV3, SHUFFLE = ("build_osnet_backbone", "build_mobilenetv2_backbone",
                              "build_mobilenetv3_backbone", "build_shufflenetv2_backbone")

# (builder, DEPTH, FastReID's FEAT_DIM); a 64 x 32 input gives 4 x 2 at stride 16 (OSNet) and
# 2 x 1 at stride 32 (the others)
CASES = [
    (OSNET, "x1_0", 512), (OSNET, "x0_75", 384), (OSNET, "x0_5", 256), (OSNET, "x0_25", 128),
    (MNV2, "1.0x", 1280), (MNV2, "0.75x", 1280), (MNV2, "0.5x", 1280), (MNV2, "0.35x", 1280),
    (MNV2, "0.25x", 1280), (MNV2, "0.1x", 1280),
    (MNV3, "Large", 1280), (MNV3, "Small", 1024),
    (SHUFFLE, "0.5x", 1024), (SHUFFLE, "1.0x", 1024), (SHUFFLE, "1.5x", 1024),
    (SHUFFLE, "2.0x", 2048),
]
GRID = {OSNET: (4, 2), MNV2: (2, 1), MNV3: (2, 1), SHUFFLE: (2, 1)}


def make_cfg(name, depth, feat_dim, **backbone):
    return backbone_cfg(NAME=name, DEPTH=depth, FEAT_DIM=feat_dim, **backbone)


@pytest.mark.parametrize("name, depth, feat_dim", CASES)
def test_forward_backward_shapes(name, depth, feat_dim):
    torch.manual_seed(0)
    backbone = build_backbone(make_cfg(name, depth, feat_dim)).train()
    out = backbone(torch.randn(2, 3, 64, 32))
    assert backbone.out_channels == feat_dim
    assert out.shape == (2, feat_dim, *GRID[name])
    out.square().mean().backward()
    # every parameter takes part in the output: no dead branch, no unused module. (OSNet's
    # gates squeeze to channels // 16, a single ReLU unit in x0_25, which may be dead at init.)
    for key, param in backbone.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
        assert ".gate.fc" in key or param.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name, depth, feat_dim", [(OSNET, "x0_25", 128), (MNV3, "Small", 1024),
                                                   (SHUFFLE, "0.5x", 1024)])
def test_last_stride_is_ignored_as_in_fastreid(name, depth, feat_dim):
    x = torch.randn(2, 3, 64, 32)
    shapes = {build_backbone(make_cfg(name, depth, feat_dim, LAST_STRIDE=s)).eval()(x).shape
              for s in (1, 2)}
    assert shapes == {(2, feat_dim, *GRID[name])}


@pytest.mark.parametrize("name, family, bad, accepted", [
    (OSNET, "an OSNet depth", "x2_0", "x1_0, x0_75, x0_5, x0_25"),
    (MNV2, "a MobileNetV2 width", "1.0", "1.0x, 0.75x, 0.5x, 0.35x, 0.25x, 0.1x"),
    (MNV3, "a MobileNetV3 size", "large", "Large, Small"),
    (SHUFFLE, "a ShuffleNetV2 size", "50x", "0.5x, 1.0x, 1.5x, 2.0x"),
])
def test_bad_depth_names_the_accepted_values(name, family, bad, accepted):
    assert error_message(build_backbone, make_cfg(name, bad, 512)) == (
        f"MODEL.BACKBONE.DEPTH {bad!r} is not {family}; expected one of {accepted}")


@pytest.mark.parametrize("name, depth, key", [
    (OSNET, "x1_0", "WITH_SE"), (OSNET, "x1_0", "WITH_NL"), (MNV2, "1.0x", "WITH_IBN"),
    (MNV3, "Large", "WITH_SE"), (SHUFFLE, "1.0x", "WITH_NL")])
def test_unsupported_options_fail_clearly(name, depth, key):
    assert error_message(build_backbone, make_cfg(name, depth, 512, **{key: True})) == (
        f"MODEL.BACKBONE.{key} True is not supported by {name}; set it to False")


def test_feat_dim_mismatch_names_the_right_value():
    with pytest.raises(ReidError, match=r"^MODEL.BACKBONE.FEAT_DIM is 2048 but osnet_ibn x0_5 "
                                        r"outputs 256 channels; set MODEL.BACKBONE.FEAT_DIM 256$"):
        build_backbone(make_cfg(OSNET, "x0_5", 2048, WITH_IBN=True))


# --- OSNet: parameter count from the layer formulas -------------------------------------------

def conv_norm_params(cin, cout, k=1, groups=1):
    return cin // groups * cout * k * k + 2 * cout  # conv without bias + affine norm


def os_block_params(cin, cout, instance_norm):
    mid = cout // 4
    light = mid * mid + 9 * mid + 2 * mid  # 1x1, depthwise 3x3, one norm
    hidden = mid // 16
    gate = mid * hidden + hidden + hidden * mid + mid  # two 1x1 convs with bias
    total = conv_norm_params(cin, mid) + (1 + 2 + 3 + 4) * light + gate
    total += conv_norm_params(mid, cout)
    total += conv_norm_params(cin, cout) if cin != cout else 0
    return total + (2 * cout if instance_norm else 0)


def osnet_params(channels, ibn):
    c0, c1, c2, c3 = channels
    total = conv_norm_params(3, c0, 7)  # stem: IN (affine) or BN both hold 2 * c0
    total += os_block_params(c0, c1, ibn) + os_block_params(c1, c1, ibn) + conv_norm_params(c1, c1)
    total += (os_block_params(c1, c2, False) + os_block_params(c2, c2, False)
              + conv_norm_params(c2, c2))
    total += os_block_params(c2, c3, False) + os_block_params(c3, c3, False)
    return total + conv_norm_params(c3, c3)


@pytest.mark.parametrize("depth, channels", [("x1_0", (64, 256, 384, 512)),
                                             ("x0_75", (48, 192, 288, 384)),
                                             ("x0_5", (32, 128, 192, 256)),
                                             ("x0_25", (16, 64, 96, 128))])
@pytest.mark.parametrize("ibn", [False, True])
def test_osnet_parameter_count(depth, channels, ibn):
    backbone = build_backbone(make_cfg(OSNET, depth, channels[-1], WITH_IBN=ibn))
    assert num_params(backbone) == osnet_params(channels, ibn)


def test_osnet_x1_0_count_by_hand():
    # plus the 512-d fc + BN1d of the paper's model (263,680) this is its "2.2M"
    assert num_params(build_backbone(make_cfg(OSNET, "x1_0", 512))) == 1_905_828


def test_osnet_ibn_layout():
    backbone = build_backbone(make_cfg(OSNET, "x1_0", 512, WITH_IBN=True))
    keys = backbone.state_dict().keys()
    assert type(backbone.conv1.bn) is nn.InstanceNorm2d
    assert {"conv2.0.IN.weight", "conv2.1.IN.bias", "conv1.bn.weight"} <= keys
    assert "conv1.bn.running_mean" not in keys  # instance norm keeps no statistics
    assert not any(".IN." in k for k in keys if not k.startswith("conv2."))
    plain = build_backbone(make_cfg(OSNET, "x1_0", 512)).state_dict().keys()
    assert not any(".IN." in k for k in plain) and "conv1.bn.running_mean" in plain


def test_osnet_state_dict_keys_follow_fastreid():
    keys = set(build_backbone(make_cfg(OSNET, "x0_25", 128)).state_dict())
    expected = {"conv1.conv.weight", "conv2.0.conv1.conv.weight", "conv2.0.conv2a.conv1.weight",
                "conv2.0.conv2a.conv2.weight", "conv2.0.conv2b.1.bn.weight",
                "conv2.0.conv2d.3.conv2.weight", "conv2.0.gate.fc1.weight",
                "conv2.0.gate.fc2.bias", "conv2.0.conv3.conv.weight",
                "conv2.0.downsample.conv.weight", "conv2.2.0.conv.weight",
                "conv3.2.0.bn.running_var", "conv4.1.conv3.bn.weight", "conv5.conv.weight"}
    assert expected <= keys
    assert "conv2.1.downsample.conv.weight" not in keys  # same width: identity shortcut
    assert not any(k.startswith("conv4.2") for k in keys)  # no pooling transition in conv4


# --- MobileNetV2 / V3: torchvision as the reference -------------------------------------------

def tv_mobilenet_v2(width):
    return torchvision.models.mobilenet_v2(width_mult=width,
                                           round_nearest=4 if width == 0.1 else 8)


@pytest.mark.parametrize("depth, width", list(mobilenetv2.WIDTHS.items()))
def test_mobilenetv2_count_matches_torchvision_without_classifier(depth, width):
    reference = tv_mobilenet_v2(width)
    expected = num_params(reference) - num_params(reference.classifier)
    assert num_params(build_backbone(make_cfg(MNV2, depth, 1280))) == expected


def test_mobilenetv2_keys_follow_fastreid_flat_layout():
    state = build_backbone(make_cfg(MNV2, "1.0x", 1280)).state_dict()
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.conv.0.weight"].shape == (32, 1, 3, 3)  # t=1: depthwise first
    assert state["features.1.conv.3.weight"].shape == (16, 32, 1, 1)
    assert state["features.2.conv.6.weight"].shape == (24, 96, 1, 1)
    assert state["features.17.conv.7.running_mean"].shape == (320,)
    assert state["conv.0.weight"].shape == (1280, 320, 1, 1)
    assert "features.18.0.weight" not in state


@pytest.mark.parametrize("name, depth, feat_dim", [(MNV3, "Large", 1280), (MNV3, "Small", 1024)])
def test_mobilenetv3_count_is_torchvision_features_plus_conv(name, depth, feat_dim):
    reference = getattr(torchvision.models, mobilenetv3.ARCHS[depth].torchvision_name)()
    wide = reference.classifier[0].in_features  # 960 / 576 channels out of features
    conv = wide * feat_dim + 2 * feat_dim  # FastReID's 1x1 conv (no bias) + norm
    assert num_params(build_backbone(make_cfg(name, depth, feat_dim))) == \
        num_params(reference.features) + conv


@pytest.mark.parametrize("depth", ["Large", "Small"])
def test_mobilenetv3_features_have_torchvision_names_and_shapes(depth):
    reference = getattr(torchvision.models, mobilenetv3.ARCHS[depth].torchvision_name)()
    ours = build_backbone(make_cfg(MNV3, depth, mobilenetv3.ARCHS[depth].last_channels))
    expected = {f"features.{k}": v.shape for k, v in reference.features.state_dict().items()}
    actual = {k: v.shape for k, v in ours.state_dict().items() if k.startswith("features.")}
    assert actual == expected


def randomise_norms(model):
    """Non-trivial norm statistics, so a mis-mapped key would change the output."""
    torch.manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


def built_from_file(saved, path, name, depth, feat_dim):
    """Our backbone with MODEL.BACKBONE.PRETRAIN_PATH pointing at ``saved`` written to ``path``."""
    torch.save(saved, path)
    return build_backbone(make_cfg(name, depth, feat_dim, PRETRAIN=True, PRETRAIN_PATH=str(path)))


def assert_same_output(ours, reference):
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_mobilenetv2_loads_torchvision_file_and_computes_the_same(offline, tmp_path):
    reference = randomise_norms(tv_mobilenet_v2(0.5)).eval()
    ours = built_from_file(reference.state_dict(), tmp_path / "mobilenet_v2.pth",
                           MNV2, "0.5x", 1280)
    assert_same_output(ours.eval(), reference.features)


def test_mobilenetv2_torchvision_keys_renamed_under_a_prefix():
    """Inside a model (``backbone.`` prefix) the renaming still applies, and only to it."""
    reference = randomise_norms(tv_mobilenet_v2(0.25))
    wrapper = nn.Module()
    wrapper.backbone = build_backbone(make_cfg(MNV2, "0.25x", 1280))
    wrapper.head = nn.Linear(4, 2)
    state = {f"backbone.{k}": v for k, v in reference.state_dict().items()
             if not k.startswith("classifier.")}
    state.update({"head.weight": torch.ones(2, 4), "head.bias": torch.zeros(2)})
    wrapper.load_state_dict(state, strict=True)
    assert torch.equal(wrapper.backbone.conv[1].running_var, reference.features[18][1].running_var)
    assert torch.equal(wrapper.backbone.features[3].conv[6].weight,
                       reference.features[3].conv[2].weight)


def test_mobilenetv2_fastreid_checkpoint_loads_unchanged(offline, tmp_path):
    source = randomise_norms(build_backbone(make_cfg(MNV2, "0.35x", 1280)))
    checkpoint = {"model": {f"backbone.{k}": v for k, v in source.state_dict().items()}}
    loaded = built_from_file(checkpoint, tmp_path / "model_final.pth", MNV2, "0.35x", 1280)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_mobilenetv3_loads_torchvision_file_by_name(offline, tmp_path):
    reference = randomise_norms(torchvision.models.mobilenet_v3_small()).eval()
    # torchvision trains with eps 1e-3, FastReID builds its norms with 1e-5
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-5
    ours = built_from_file(reference.state_dict(), tmp_path / "mobilenet_v3_small.pth",
                           MNV3, "Small", 1024)
    assert_same_output(ours.eval().features, reference.features)


def test_mobilenetv2_without_weights_warns(offline, caplog):
    with caplog.at_level(logging.WARNING):
        build_backbone(make_cfg(MNV2, "1.0x", 1280, PRETRAIN=True))
    assert "training from scratch" in caplog.text and "network disabled" in caplog.text


# --- ShuffleNetV2 (Megvii's layout) -----------------------------------------------------------

def shuffle_block_params(inp, oup, stride):
    mid = oup // 2
    main_out = oup - inp
    main = inp * mid + 2 * mid + 9 * mid + 2 * mid + mid * main_out + 2 * main_out
    proj = 9 * inp + 2 * inp + inp * inp + 2 * inp if stride == 2 else 0
    return main + proj


def shufflenet_params(stages, last):
    total = 3 * 24 * 9 + 2 * 24
    inp = 24
    for repeats, out in zip((4, 8, 4), stages):
        total += shuffle_block_params(inp, out, 2)
        total += (repeats - 1) * shuffle_block_params(out // 2, out, 1)
        inp = out
    return total + inp * last + 2 * last


@pytest.mark.parametrize("depth, stages, last", [("0.5x", (48, 96, 192), 1024),
                                                 ("1.0x", (116, 232, 464), 1024),
                                                 ("1.5x", (176, 352, 704), 1024),
                                                 ("2.0x", (244, 488, 976), 2048)])
def test_shufflenetv2_parameter_count(depth, stages, last):
    backbone = build_backbone(make_cfg(SHUFFLE, depth, last))
    assert num_params(backbone) == shufflenet_params(stages, last)


def test_shufflenetv2_1_0x_count_by_hand():
    # Megvii's 1.0x model is 2.28M with its 1024 x 1000 bias-free classifier
    assert num_params(build_backbone(make_cfg(SHUFFLE, "1.0x", 1024))) + 1024 * 1000 == 2_278_760


def test_shufflenetv2_keys_follow_megvii_layout():
    state = build_backbone(make_cfg(SHUFFLE, "1.0x", 1024)).state_dict()
    assert state["first_conv.0.weight"].shape == (24, 3, 3, 3)
    assert state["features.0.branch_proj.0.weight"].shape == (24, 1, 3, 3)
    assert state["features.0.branch_proj.2.weight"].shape == (24, 24, 1, 1)
    assert state["features.0.branch_main.5.weight"].shape == (116 - 24, 58, 1, 1)
    assert state["features.1.branch_main.0.weight"].shape == (58, 58, 1, 1)
    assert state["features.15.branch_main.6.running_var"].shape == (232,)
    assert state["conv_last.0.weight"].shape == (1024, 464, 1, 1)
    assert "features.1.branch_proj.0.weight" not in state
    assert "features.16.branch_main.0.weight" not in state  # 4 + 8 + 4 blocks


def test_shufflenet_split_takes_even_then_odd_channels():
    x = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3, 1)
    even, odd = shufflenetv2.split_even_odd(x)
    for channel in range(8):
        part = even if channel % 2 == 0 else odd
        assert torch.equal(part[:, channel // 2], x[:, channel])


def test_shufflenetv2_loads_megvii_file(offline, tmp_path):
    source = randomise_norms(build_backbone(make_cfg(SHUFFLE, "0.5x", 1024)))
    megvii = {f"module.{k}": v for k, v in source.state_dict().items()}
    megvii["module.classifier.0.weight"] = torch.zeros(1000, 1024)
    loaded = built_from_file({"state_dict": megvii}, tmp_path / "ShuffleNetV2.0.5x.pth.tar",
                             SHUFFLE, "0.5x", 1024)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_shufflenetv2_rejects_torchvision_weights(offline, tmp_path):
    torchvision_state = torchvision.models.shufflenet_v2_x0_5().state_dict()
    with pytest.raises(ReidError, match=r"^torchvision's ShuffleNetV2 weights do not fit "
                                        r"FastReID's \(Megvii's\) ShuffleNetV2 layout"):
        built_from_file(torchvision_state, tmp_path / "shufflenetv2_x0.5.pth", SHUFFLE, "0.5x",
                        1024)


def test_shufflenetv2_without_path_warns(offline, caplog):
    with caplog.at_level(logging.WARNING):
        build_backbone(make_cfg(SHUFFLE, "0.5x", 1024, PRETRAIN=True))
    assert "only from MODEL.BACKBONE.PRETRAIN_PATH" in caplog.text


# --- OSNet release files ----------------------------------------------------------------------

def test_osnet_release_file_loads_from_the_hub_cache(offline):
    source = randomise_norms(build_backbone(make_cfg(OSNET, "x0_25", 128, WITH_IBN=True)))
    release = {f"module.{k}": v for k, v in source.state_dict().items()}
    release["classifier.weight"] = torch.zeros(1000, 128)  # the release's ImageNet head
    (offline / "checkpoints").mkdir(parents=True)
    torch.save(release, offline / "checkpoints" / "osnet_ibn_x0_25_imagenet.pth")
    loaded = build_backbone(make_cfg(OSNET, "x0_25", 128, WITH_IBN=True, PRETRAIN=True))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_osnet_missing_release_file_warns_with_its_name(offline, caplog):
    with caplog.at_level(logging.WARNING):
        build_backbone(make_cfg(OSNET, "x0_5", 256, PRETRAIN=True))
    assert "Put osnet_x0_5_imagenet.pth" in caplog.text
