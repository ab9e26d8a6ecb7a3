"""ResNet / ResNeXt variants (IBN-a, SE, non-local): shapes, FastReID names, exact parameter
counts from the architecture formula, and the IBN / SE / non-local math against brute force."""
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from reid.errors import ReidError
from reid.modeling.backbones.resnet import build_resnet_backbone
from reid.modeling.backbones.resnext import build_resnext_backbone
from reid.modeling.layers.ibn import IBN
from reid.modeling.layers.non_local import NonLocal
from reid.modeling.layers.se import SELayer
from toys import backbone_cfg, error_message, num_params

BLOCKS = {"18x": (2, 2, 2, 2), "34x": (3, 4, 6, 3), "50x": (3, 4, 6, 3),
          "101x": (3, 4, 23, 3), "152x": (3, 8, 36, 3)}
BOTTLENECK_DEPTHS = ("50x", "101x", "152x")
NO_NL = (0, 0, 0, 0)
NL_LAYERS = {"50x": (0, 2, 3, 0), "101x": (0, 2, 9, 0)}  # FastReID's non-local layouts
VARIANTS = {"plain": {}, "ibn": {"WITH_IBN": True}, "se": {"WITH_SE": True},
            "nl": {"WITH_NL": True}}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(depth="50x", **backbone):
    return backbone_cfg(DEPTH=depth, **backbone)


def build(builder, depth, **options):
    return builder(make_cfg(depth, **options))


# --- the architecture formula, written from the papers' tables --------------------------------

def conv(cin, cout, k, groups=1, bias=False):
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def bn(channels):  # weight + bias; IBN-a (IN on half, BN on the rest) has the same count
    return 2 * channels


def se(channels):  # two bias-free linear layers, reduction 16
    return 2 * channels * (channels // 16)


def non_local(channels):  # g, theta, phi: C -> 1 with bias; W: 1 -> C with bias, then BN
    inter = 1  # FastReID 1.4's inner width (reduc_ratio // reduc_ratio)
    return (3 * conv(channels, inter, 1, bias=True) + conv(inter, channels, 1, bias=True)
            + bn(channels))


def expected_params(depth, with_se=False, nl_layers=(0, 0, 0, 0), groups=1, base_width=64):
    bottleneck = depth in BOTTLENECK_DEPTHS
    total = conv(3, 64, 7) + bn(64)
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth])):
        cout = planes * 4 if bottleneck else planes
        for index in range(blocks):
            if bottleneck:
                width = planes * base_width // 64 * groups
                total += (conv(cin, width, 1) + bn(width) + conv(width, width, 3, groups)
                          + bn(width) + conv(width, cout, 1) + bn(cout))
            else:
                total += conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
            if with_se:
                total += se(cout)
            if index == 0 and (stage > 0 or cin != cout):  # stride 2 or a channel change
                total += conv(cin, cout, 1) + bn(cout)
            cin = cout
        total += nl_layers[stage] * non_local(cout)
    return total


def test_formula_reproduces_the_reference_counts():
    # the reference: FastReID R50 backbone (last stride 1), and BoT-R50 with 100 classes
    # (BNNeck weight + bias, bias-free classifier)
    assert expected_params("50x") == 23_508_032
    assert expected_params("50x") + bn(2048) + 2048 * 100 == 23_716_928


def test_hand_computed_counts():
    # written out once by hand, so a shared mistake in the formula would show
    assert expected_params("50x", with_se=True) - expected_params("50x") == (
        3 * 256 * 256 // 8 + 4 * 512 * 512 // 8 + 6 * 1024 * 1024 // 8 + 3 * 2048 * 2048 // 8)
    assert non_local(512) == 3 * (512 + 1) + (512 + 512) + 2 * 512  # g,theta,phi; W conv; W BN
    assert expected_params("50x", nl_layers=(0, 2, 3, 0)) == (
        23_508_032 + 2 * (7 * 512 + 3) + 3 * (7 * 1024 + 3))
    # FastReID 1.4's AGW-R50 with 100 classes (tests/data/fastreid/AGW-R50.json): 23,745,615
    assert expected_params("50x", nl_layers=(0, 2, 3, 0)) + bn(2048) + 2048 * 100 == 23_745_615
    # torchvision's resnext50_32x4d: 25,028,904 parameters, 2,049,000 of them in its fc
    assert expected_params("50x", groups=32, base_width=4) == 25_028_904 - 2_049_000


# --- every depth x variant builds, runs forward + backward ------------------------------------

def variant_cases():
    cases = []
    for depth in BLOCKS:
        for index, variant in enumerate(VARIANTS):
            if variant == "nl" and depth not in ("50x", "101x"):
                continue
            cases.append((depth, variant, 1 + index % 2))  # alternate LAST_STRIDE 1 / 2
    return cases


def expected_grid(last_stride):
    # 64 x 32 input: stride 16 (LAST_STRIDE 1) -> 4 x 2, stride 32 (LAST_STRIDE 2) -> 2 x 1
    return (4, 2) if last_stride == 1 else (2, 1)


def forward_backward(backbone, last_stride, channels):
    torch.manual_seed(0)
    out = backbone.train()(torch.randn(2, 3, 64, 32))
    assert out.shape == (2, channels, *expected_grid(last_stride))
    out.square().mean().backward()
    for name, param in backbone.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert backbone.conv1.weight.grad.abs().sum() > 0


def count_keys(state, suffix):
    return sum(key.endswith(suffix) for key in state)


@pytest.mark.parametrize("depth, variant, last_stride", variant_cases())
def test_resnet_variant_runs_with_the_formulas_parameter_count(depth, variant, last_stride):
    backbone = build(build_resnet_backbone, depth, LAST_STRIDE=last_stride, **VARIANTS[variant])
    channels = 2048 if depth in BOTTLENECK_DEPTHS else 512
    assert backbone.out_channels == channels
    nl_layers = NL_LAYERS.get(depth, NO_NL) if variant == "nl" else NO_NL
    assert num_params(backbone) == expected_params(depth, with_se=variant == "se",
                                                   nl_layers=nl_layers)
    forward_backward(backbone, last_stride, channels)
    state = backbone.state_dict()
    blocks = BLOCKS[depth]
    assert count_keys(state, ".bn1.IN.weight") == (sum(blocks[:3]) if variant == "ibn" else 0)
    assert count_keys(state, ".se.fc.0.weight") == (sum(blocks) if variant == "se" else 0)
    for stage in range(1, 5):
        assert sum(k.startswith(f"NL_{stage}.") and k.endswith(".g.weight")
                   for k in state) == nl_layers[stage - 1]


@pytest.mark.parametrize("depth, variant, last_stride", [
    ("50x", "plain", 1), ("50x", "ibn", 2), ("50x", "nl", 1),
    ("101x", "plain", 2), ("101x", "ibn", 1), ("101x", "nl", 2)])
def test_resnext_variant_runs_with_the_formulas_parameter_count(depth, variant, last_stride):
    backbone = build(build_resnext_backbone, depth, LAST_STRIDE=last_stride, **VARIANTS[variant])
    assert backbone.out_channels == 2048
    # FastReID's ResNeXt: 32 groups x 4 channels, non-local 2 + 3 at both depths
    nl_layers = (0, 2, 3, 0) if variant == "nl" else NO_NL
    assert num_params(backbone) == expected_params(depth, nl_layers=nl_layers, groups=32,
                                                   base_width=4)
    forward_backward(backbone, last_stride, 2048)
    # FastReID's ResNeXt puts IBN in all four stages
    ibn_blocks = sum(BLOCKS[depth]) if variant == "ibn" else 0
    assert count_keys(backbone.state_dict(), ".bn1.IN.weight") == ibn_blocks
    assert backbone.layer1[0].conv2.groups == 32


# --- FastReID's names --------------------------------------------------------------------------

def test_ibn_keys_follow_fastreid():
    state = build(build_resnet_backbone, "50x", LAST_STRIDE=2, WITH_IBN=True).state_dict()
    assert sorted(k for k in state if k.startswith("layer1.0.bn1.")) == [
        "layer1.0.bn1.BN.bias", "layer1.0.bn1.BN.num_batches_tracked",
        "layer1.0.bn1.BN.running_mean", "layer1.0.bn1.BN.running_var", "layer1.0.bn1.BN.weight",
        "layer1.0.bn1.IN.bias", "layer1.0.bn1.IN.weight"]
    assert state["layer3.5.bn1.IN.weight"].shape == (128,)  # half of 256
    assert state["layer3.5.bn1.BN.running_mean"].shape == (128,)
    assert "layer4.0.bn1.weight" in state and not any(".IN." in k for k in state
                                                       if k.startswith("layer4."))


def test_se_and_nonlocal_keys_follow_fastreid():
    state = build(build_resnet_backbone, "50x", WITH_SE=True, WITH_NL=True).state_dict()
    assert state["layer2.0.se.fc.0.weight"].shape == (32, 512)
    assert state["layer2.0.se.fc.2.weight"].shape == (512, 32)
    assert sorted(k for k in state if k.startswith("NL_3.2.")) == [
        "NL_3.2.W.0.bias", "NL_3.2.W.0.weight", "NL_3.2.W.1.bias",
        "NL_3.2.W.1.num_batches_tracked", "NL_3.2.W.1.running_mean", "NL_3.2.W.1.running_var",
        "NL_3.2.W.1.weight", "NL_3.2.g.bias", "NL_3.2.g.weight", "NL_3.2.phi.bias",
        "NL_3.2.phi.weight", "NL_3.2.theta.bias", "NL_3.2.theta.weight"]
    assert state["NL_3.2.g.weight"].shape == (1, 1024, 1, 1)  # FastReID 1.4 inner width 1
    assert not any(k.startswith(("NL_1.", "NL_4.", "NL_3.3.")) for k in state)


def test_resnext50_matches_torchvision_resnext50_32x4d_without_fc():
    ours = build(build_resnext_backbone, "50x", LAST_STRIDE=1).state_dict()
    reference = {k: v.shape for k, v in torchvision.models.resnext50_32x4d().state_dict().items()
                 if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == reference


def test_stem_pooling_is_fastreids():
    resnet_pool = build(build_resnet_backbone, "18x", LAST_STRIDE=1).maxpool
    resnext_pool = build(build_resnext_backbone, "50x", LAST_STRIDE=1).maxpool
    assert (resnet_pool.padding, resnet_pool.ceil_mode) == (0, True)
    assert (resnext_pool.padding, resnext_pool.ceil_mode) == (1, False)


def test_nonlocal_blocks_follow_the_last_blocks_of_their_stage():
    backbone = build(build_resnet_backbone, "50x", LAST_STRIDE=2, WITH_NL=True).eval()
    order, hooks = [], []
    for name, module in backbone.named_modules():
        if name.count(".") == 1 and name.startswith(("layer2", "layer3", "NL_")):
            hooks.append(module.register_forward_hook(lambda *_, name=name: order.append(name)))
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 32))
    for hook in hooks:
        hook.remove()
    assert order == ["layer2.0", "layer2.1", "layer2.2", "NL_2.0", "layer2.3", "NL_2.1",
                     "layer3.0", "layer3.1", "layer3.2", "layer3.3", "NL_3.0", "layer3.4",
                     "NL_3.1", "layer3.5", "NL_3.2"]


# --- the math of the layers --------------------------------------------------------------------

def randomise_affine(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param))


def test_ibn_instance_norms_the_first_half_and_batch_norms_the_rest():
    ibn = IBN(5)  # odd: 2 channels of instance norm, 3 of batch norm
    randomise_affine(ibn)
    x = torch.randn(3, 5, 4, 6) * 3 + 1
    eps = 1e-5

    def normalise(part, dims, weight, bias):
        mean = part.mean(dim=dims, keepdim=True)
        var = part.var(dim=dims, unbiased=False, keepdim=True)
        return (part - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) \
            + bias.view(1, -1, 1, 1)

    expected = torch.cat([normalise(x[:, :2], (2, 3), ibn.IN.weight, ibn.IN.bias),
                          normalise(x[:, 2:], (0, 2, 3), ibn.BN.weight, ibn.BN.bias)], dim=1)
    torch.testing.assert_close(ibn.train()(x), expected, atol=1e-5, rtol=1e-5)
    # and the same through torch's functional forms, in eval mode with running statistics
    ibn.eval()
    expected = torch.cat([
        F.instance_norm(x[:, :2], weight=ibn.IN.weight, bias=ibn.IN.bias, eps=eps),
        F.batch_norm(x[:, 2:], ibn.BN.running_mean, ibn.BN.running_var, ibn.BN.weight,
                     ibn.BN.bias, training=False, eps=eps)], dim=1)
    torch.testing.assert_close(ibn(x), expected)
    assert ibn.BN.running_mean.shape == (3,)


def test_se_layer_gates_channels_by_their_average():
    layer = SELayer(32)
    randomise_affine(layer)
    x = torch.randn(2, 32, 3, 5)
    w1, w2 = layer.fc[0].weight, layer.fc[2].weight
    expected = torch.empty_like(x)
    for b in range(2):
        squeeze = x[b].mean(dim=(1, 2))
        gate = torch.sigmoid(w2 @ torch.relu(w1 @ squeeze))
        expected[b] = x[b] * gate.view(32, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    assert w1.shape == (2, 32)


def test_nonlocal_matches_brute_force():
    block = NonLocal(4, inter_channels=2).eval()  # the paper's C/2: a non-trivial inner width
    randomise_affine(block)
    with torch.no_grad():
        block.W[1].running_mean.uniform_(-1, 1)
        block.W[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 3, 2)
    positions = [(h, w) for h in range(3) for w in range(2)]

    def project(conv, vector):  # a 1x1 conv at one position
        return conv.weight[:, :, 0, 0] @ vector + conv.bias

    expected = torch.empty_like(x)
    bn_layer = block.W[1]
    for b in range(2):
        for (hi, wi) in positions:
            xi = x[b, :, hi, wi]
            y = torch.zeros(2)
            for (hj, wj) in positions:
                xj = x[b, :, hj, wj]
                weight = project(block.theta, xi) @ project(block.phi, xj) / len(positions)
                y = y + weight * project(block.g, xj)
            wy = project(block.W[0], y)
            wy = (wy - bn_layer.running_mean) / torch.sqrt(bn_layer.running_var + bn_layer.eps) \
                * bn_layer.weight + bn_layer.bias
            expected[b, :, hi, wi] = wy + xi
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_fresh_nonlocal_block_is_an_identity():
    block = NonLocal(8).eval()
    x = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    assert block.inter_channels == 1  # FastReID 1.4's width, so its checkpoints load


# --- errors and warnings -----------------------------------------------------------------------

def test_bad_resnet_depth_is_one_clear_line():
    assert error_message(build_resnet_backbone, make_cfg("20x")) == (
        "MODEL.BACKBONE.DEPTH '20x' is not a ResNet depth; "
        "expected one of 18x, 34x, 50x, 101x, 152x")


def test_bad_resnext_depth_is_one_clear_line():
    assert error_message(build_resnext_backbone, make_cfg("18x")) == (
        "MODEL.BACKBONE.DEPTH '18x' is not a ResNeXt depth; expected one of 50x, 101x")


def test_nonlocal_on_152x_has_no_layout():
    assert error_message(build_resnet_backbone, make_cfg("152x", WITH_NL=True)) == (
        "MODEL.BACKBONE.WITH_NL True has no non-local layout for resnet 152x (nl) "
        "(FastReID defines one for 50x and 101x); set it to False")


def test_bad_last_stride():
    with pytest.raises(ReidError, match=r"^MODEL.BACKBONE.LAST_STRIDE must be 1 or 2; got 3$"):
        build_resnet_backbone(make_cfg("18x", LAST_STRIDE=3))


def test_nonlocal_on_basic_blocks_warns_and_adds_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        backbone = build_resnet_backbone(make_cfg("18x", WITH_NL=True))
    assert "WITH_NL adds no non-local block to resnet 18x (nl)" in caplog.text
    assert num_params(backbone) == expected_params("18x")


def test_resnext_ignores_se_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        backbone = build_resnext_backbone(make_cfg("50x", WITH_SE=True))
    assert "WITH_SE is ignored by build_resnext_backbone" in caplog.text
    assert not any(".se." in k for k in backbone.state_dict())


# --- ImageNet weights --------------------------------------------------------------------------

def save_weights_like(builder, cfg, path, wrap=lambda state: state):
    """Random weights of the backbone ``cfg`` builds, plus an ImageNet ``fc``, saved to ``path``."""
    torch.manual_seed(7)
    state = {k: torch.randn_like(v.float()) if v.is_floating_point() else v
             for k, v in builder(cfg).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap({**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}),
               path)
    return state


def assert_same_state(backbone, state):
    ours = backbone.state_dict()
    assert ours.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_ibn_weights_come_from_ibn_nets_file_in_the_hub_cache(offline):
    cfg = make_cfg("50x", WITH_IBN=True)
    state = save_weights_like(build_resnet_backbone, cfg,
                              offline / "checkpoints" / "resnet50_ibn_a-d9d0bb7b.pth")
    cfg.MODEL.BACKBONE.PRETRAIN = True
    assert_same_state(build_resnet_backbone(cfg), state)


def test_ibn_weights_from_pretrain_path_with_module_prefix(offline, tmp_path):
    cfg = make_cfg("18x", WITH_IBN=True)
    path = tmp_path / "ibn.pth"
    state = save_weights_like(build_resnet_backbone, cfg, path, wrap=lambda s: {
        "state_dict": {f"module.{k}": v for k, v in s.items()}})
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(path)
    assert_same_state(build_resnet_backbone(cfg), state)


def test_missing_ibn_weights_warn_and_train_from_scratch(offline, caplog):
    with caplog.at_level(logging.WARNING):
        backbone = build_resnet_backbone(make_cfg("34x", WITH_IBN=True, PRETRAIN=True))
    assert "resnet34_ibn_a-94bc1577.pth" in caplog.text
    assert "training from scratch" in caplog.text
    assert backbone.out_channels == 512


def test_plain_resnext101_has_no_known_file(offline, caplog):
    with caplog.at_level(logging.WARNING):
        build_resnext_backbone(make_cfg("101x", PRETRAIN=True))  # torchvision's is 32x8d
    assert "no ImageNet weights known for this backbone; training from scratch" in caplog.text


def test_resnext50_loads_torchvisions_file_from_the_hub_cache(offline):
    name = Path(torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1.url).name
    cfg = make_cfg("50x")
    state = save_weights_like(build_resnext_backbone, cfg, offline / "checkpoints" / name)
    cfg.MODEL.BACKBONE.PRETRAIN = True
    assert_same_state(build_resnext_backbone(cfg), state)
