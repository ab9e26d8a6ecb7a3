"""RegNet, EfficientNet and RepVGG backbones: FastReID depths, layouts, sizes, RepVGG fusion."""
import functools

import pytest
import torch
import torchvision

from reid.errors import ReidError
from reid.modeling.backbones import effnet, regnet, repvgg
from toys import backbone_cfg, error_message, num_params

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = {"regnet": regnet.build_regnet_backbone, "effnet": effnet.build_effnet_backbone,
            "repvgg": repvgg.build_repvgg_backbone}
FAMILY_SPECS = {"regnet": regnet.SPECS, "effnet": effnet.SPECS, "repvgg": repvgg.SPECS}
ALL_DEPTHS = [(family, depth) for family, specs in FAMILY_SPECS.items() for depth in specs]


def build(family, depth, **backbone):
    return BUILDERS[family](backbone_cfg(DEPTH=depth, **backbone))


@functools.lru_cache(maxsize=None)
def build_on_meta(family, depth):
    """Shapes only, no memory and no init cost (B3 has 120M parameters); shared, do not modify."""
    with torch.device("meta"):
        return build(family, depth)


def test_fastreid_depth_names_are_all_there():
    assert list(regnet.SPECS) == ["800x", "800y", "1600x", "1600y", "3200x", "3200y",
                                  "4000x", "4000y", "6400x", "6400y"]
    assert list(effnet.SPECS) == ["b0", "b1", "b2", "b3", "b4", "b5"]
    assert list(repvgg.SPECS) == ["A0", "A1", "A2", "B0", "B1", "B1g2", "B1g4", "B2", "B2g2",
                                  "B2g4", "B3", "B3g2", "B3g4"]


# the last stage's width (RegNet, RepVGG) or the head width (EfficientNet), from the papers
OUT_CHANNELS = {
    "800x": 672, "800y": 768, "1600x": 912, "1600y": 888, "3200x": 1008, "3200y": 1512,
    "4000x": 1360, "4000y": 1088, "6400x": 1624, "6400y": 1296,
    "b0": 1280, "b1": 1280, "b2": 1408, "b3": 1536, "b4": 1792, "b5": 2048,
    "A0": 1280, "A1": 1280, "A2": 1408, "B0": 1280, "B1": 2048, "B1g2": 2048, "B1g4": 2048,
    "B2": 2560, "B2g2": 2560, "B2g4": 2560, "B3": 2560, "B3g2": 2560, "B3g4": 2560,
}


@pytest.mark.parametrize("family, depth", ALL_DEPTHS)
def test_every_depth_builds(family, depth):
    model = build_on_meta(family, depth)
    assert model.out_channels == OUT_CHANNELS[depth]
    assert num_params(model) > 0


# pycls' model zoo tables (per-stage depths, widths, group width), written out independently
# of the (w0, wa, wm, depth) parametrisation that regnet.py generates them from
PYCLS_STAGES = {
    "800x": ([1, 3, 7, 5], [64, 128, 288, 672], 16),
    "1600x": ([2, 4, 10, 2], [72, 168, 408, 912], 24),
    "3200x": ([2, 6, 15, 2], [96, 192, 432, 1008], 48),
    "4000x": ([2, 5, 14, 2], [80, 240, 560, 1360], 40),
    "6400x": ([2, 4, 10, 1], [168, 392, 784, 1624], 56),
    "800y": ([1, 3, 8, 2], [64, 128, 320, 768], 16),
    "1600y": ([2, 6, 17, 2], [48, 120, 336, 888], 24),
    "3200y": ([2, 5, 13, 1], [72, 216, 576, 1512], 24),
    "4000y": ([2, 6, 12, 2], [128, 192, 512, 1088], 64),
    "6400y": ([2, 7, 14, 2], [144, 288, 576, 1296], 72),
}


@pytest.mark.parametrize("depth", list(PYCLS_STAGES))
def test_regnet_stages_match_pycls_model_zoo(depth):
    stages = regnet.regnet_stages(regnet.SPECS[depth])
    depths, widths, group_width = PYCLS_STAGES[depth]
    assert [s.depth for s in stages] == depths
    assert [s.width for s in stages] == widths
    assert {s.group_width for s in stages} == {group_width}
    model = build_on_meta("regnet", depth)
    blocks = [f"s{index}" for index in range(1, 5)]
    assert [len(getattr(model, name)) for name in blocks] == depths
    # SE exactly in the Y models
    assert hasattr(model.s1.b1.f.se, "f_ex") == depth.endswith("y")


@pytest.mark.parametrize("depth, reference", [
    ("800x", torchvision.models.regnet_x_800mf), ("1600y", torchvision.models.regnet_y_1_6gf)])
def test_regnet_parameter_count_matches_torchvision(depth, reference):
    # same design (simple stem, bottleneck multiplier 1, SE width from the block input);
    # torchvision's regnet_y_800mf rounds its widths differently from pycls, so 1.6GF is used
    assert num_params(build_on_meta("regnet", depth)) == num_params(reference(), skip=("fc.",))


# pycls-paper sizes with a 1000-class classifier, in millions: RegNetX-800MF 7.3, Y-800MF 6.3
@pytest.mark.parametrize("depth, millions, fc_in", [("800x", 7.3, 672), ("800y", 6.3, 768)])
def test_regnet_800mf_matches_published_size(depth, millions, fc_in):
    total = num_params(build_on_meta("regnet", depth)) + fc_in * 1000 + 1000
    assert round(total / 1e6, 1) == millions


@pytest.mark.parametrize("depth", ["b0", "b5"])
def test_effnet_parameter_count_matches_torchvision(depth):
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"efficientnet_{depth}")()
    expected = num_params(reference, skip=("classifier.",))
    assert num_params(build_on_meta("effnet", depth)) == expected


def repvgg_train_parameters(spec):
    """Layer formula: per block 3x3 conv + 1x1 conv (in/groups inputs) + 2 BNs [+ identity BN]."""
    total, c_in, layer = 0, 3, 0
    widths = [min(64, int(64 * spec.width_multipliers[0]))] + [
        int(base * m) for base, m in zip((64, 128, 256, 512), spec.width_multipliers)]
    depths = [1, *spec.depths]
    strides = [2, 2, 2, 2, 1]
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        for block in range(depth):
            groups = spec.groups if layer in range(2, 27, 2) else 1
            total += width * (c_in // groups) * (9 + 1) + 2 * width * 2
            if c_in == width and (block > 0 or strides[stage] == 1):
                total += 2 * c_in
            c_in, layer = width, layer + 1
    return total


@pytest.mark.parametrize("depth", ["A0", "B1g2", "B3g4"])
def test_repvgg_parameter_count_matches_layer_formula(depth):
    model = build_on_meta("repvgg", depth)
    assert num_params(model) == repvgg_train_parameters(repvgg.SPECS[depth])


# RepVGG paper, Table 3: inference-time parameters with the 1000-class classifier, in
# millions truncated to two decimals (8.30 = 8,30x,xxx)
@pytest.mark.parametrize("depth, hundredths_of_millions", [
    ("A0", 830), ("A1", 1278), ("B0", 1433), ("B1", 5182), ("B3", 11096)])
def test_repvgg_deployed_size_matches_paper(depth, hundredths_of_millions):
    with torch.device("meta"):
        model = build("repvgg", depth).deploy()
    total = num_params(model) + model.out_channels * 1000 + 1000
    assert total // 10_000 == hundredths_of_millions


@pytest.mark.parametrize("family, depth, last_stride, grid", [
    ("regnet", "800y", 1, (4, 2)), ("effnet", "b0", 1, (4, 2)), ("repvgg", "A0", 1, (4, 2)),
    ("regnet", "800x", 2, (2, 1)), ("effnet", "b0", 2, (2, 1)), ("repvgg", "A0", 2, (2, 1))])
def test_output_shape(family, depth, last_stride, grid):
    with torch.device("meta"):
        model = build(family, depth, LAST_STRIDE=last_stride).eval()
        out = model(torch.empty(2, 3, 64, 32))
    assert tuple(out.shape) == (2, OUT_CHANNELS[depth], *grid)


@pytest.mark.parametrize("family, depth", [("regnet", "800y"), ("effnet", "b0"),
                                           ("repvgg", "A0")])
def test_smallest_trains_forward_and_backward(family, depth):
    torch.manual_seed(0)
    model = build(family, depth).train()
    out = model(torch.randn(2, 3, 64, 32))
    assert out.shape == (2, OUT_CHANNELS[depth], 4, 2)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first = next(model.parameters())
    assert first.grad.abs().sum() > 0  # the stem's first conv receives gradient


@pytest.mark.parametrize("family, depth, names", [
    ("regnet", "800y", ["stem.conv.weight", "stem.bn.running_var", "s1.b1.proj.weight",
                        "s1.b1.bn.weight", "s1.b1.f.a.weight", "s1.b1.f.b_bn.bias",
                        "s1.b1.f.se.f_ex.0.weight", "s1.b1.f.se.f_ex.2.bias",
                        "s4.b2.f.c_bn.running_mean"]),
    ("effnet", "b0", ["stem.conv.weight", "stem.bn.weight", "s1.b1.dwise.weight",
                      "s1.b1.se.f_ex.0.weight", "s2.b1.exp.weight", "s2.b1.exp_bn.bias",
                      "s7.b1.lin_proj_bn.running_var", "head.conv.weight", "head.conv_bn.weight"]),
    ("repvgg", "A0", ["stage0.rbr_dense.conv.weight", "stage0.rbr_1x1.bn.weight",
                      "stage1.1.rbr_identity.running_mean", "stage3.13.rbr_dense.bn.bias",
                      "stage4.0.rbr_1x1.conv.weight"]),
])
def test_fastreid_parameter_names(family, depth, names):
    keys = set(build_on_meta(family, depth).state_dict())
    assert set(names) <= keys
    assert not any(key.startswith(("fc.", "head.fc", "linear")) for key in keys)


def test_regnet_x_has_no_se_and_b0_first_block_no_expansion():
    assert "s1.b1.f.se.f_ex.0.weight" not in build_on_meta("regnet", "800x").state_dict()
    assert "s1.b1.exp.weight" not in build_on_meta("effnet", "b0").state_dict()


def randomise_batch_norms(model, generator):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def check_fusion(model, inputs):
    randomise_batch_norms(model, torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        expected = model(inputs)
        model.deploy()
        fused = model(inputs)
    assert expected.abs().max() > 1e-2  # a non-trivial output to compare
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)


def test_repvgg_a0_deploy_gives_the_same_output():
    torch.manual_seed(0)
    model = build("repvgg", "A0")
    check_fusion(model, torch.randn(2, 3, 64, 32))
    blocks = [m for m in model.modules() if isinstance(m, repvgg.RepVGGBlock)]
    assert len(blocks) == 22 and all(b.deploying for b in blocks)
    keys = set(model.state_dict())
    assert "stage0.fused_weight" in keys and "stage1.1.fused_bias" in keys
    assert not any("rbr_" in key for key in keys)
    assert model.stage1[1].fused_weight.shape == (48, 48, 3, 3)


def test_repvgg_grouped_deploy_gives_the_same_output():
    # layer 2 (stage1's second block) is grouped and has the identity branch
    torch.manual_seed(0)
    spec = repvgg.RepVGGSpec((2, 2, 2, 1), (0.25, 0.25, 0.25, 0.25), groups=4)
    model = repvgg.RepVGG(spec)
    assert model.stage1[1].groups == 4 and model.stage1[1].rbr_identity is not None
    check_fusion(model, torch.randn(2, 3, 64, 32))
    assert model.stage1[1].fused_weight.shape == (16, 4, 3, 3)


def test_repvgg_deploy_cannot_be_undone():
    spec = repvgg.RepVGGSpec((1, 1, 1, 1), (0.25, 0.25, 0.25, 0.25))
    model = repvgg.RepVGG(spec).deploy()
    with pytest.raises(ValueError, match="cannot be turned back"):
        model.deploy(False)


@pytest.mark.parametrize("family, bad, expected", [
    ("regnet", "800", "MODEL.BACKBONE.DEPTH '800' is not a RegNet depth; expected one of "
                      "800x, 800y, 1600x, 1600y, 3200x, 3200y, 4000x, 4000y, 6400x, 6400y"),
    ("effnet", "b7", "MODEL.BACKBONE.DEPTH 'b7' is not an EfficientNet depth; expected one of "
                     "b0, b1, b2, b3, b4, b5"),
    ("repvgg", "a0", "MODEL.BACKBONE.DEPTH 'a0' is not a RepVGG depth; expected one of A0, A1, "
                     "A2, B0, B1, B1g2, B1g4, B2, B2g2, B2g4, B3, B3g2, B3g4"),
])
def test_bad_depth_is_one_clear_line(family, bad, expected):
    assert error_message(build, family, bad) == expected


@pytest.mark.parametrize("family, depth", [("regnet", "800x"), ("effnet", "b0"),
                                           ("repvgg", "A0")])
def test_unsupported_options_fail_clearly(family, depth):
    with pytest.raises(ReidError, match=r"MODEL.BACKBONE.WITH_IBN True is not supported by"):
        build(family, depth, WITH_IBN=True)


@pytest.mark.parametrize("family, depth", [("regnet", "800y"), ("effnet", "b0"),
                                           ("repvgg", "A0")])
def test_pretrain_path_loads_a_fastreid_checkpoint_by_name(family, depth, tmp_path):
    torch.manual_seed(0)
    source = build(family, depth)
    path = tmp_path / "model.pth"
    torch.save({"model": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(1)
    loaded = build(family, depth, PRETRAIN=True, PRETRAIN_PATH=str(path))
    for (name, expected), actual in zip(source.state_dict().items(),
                                        loaded.state_dict().values()):
        assert torch.equal(actual, expected), name


def test_missing_pretrain_path_is_a_clear_error(tmp_path):
    with pytest.raises(ReidError, match=r"MODEL.BACKBONE.PRETRAIN_PATH .*missing.pth does not"):
        build("repvgg", "A0", PRETRAIN=True, PRETRAIN_PATH=str(tmp_path / "missing.pth"))
