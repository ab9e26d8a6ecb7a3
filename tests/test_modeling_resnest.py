"""ResNeSt backbone: FastReID's names and sizes, split attention against a brute force, shapes."""
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reid.config import load_config
from reid.errors import ReidError
from reid.modeling import build_backbone, build_model
from reid.modeling.backbones import resnest  # registers build_resnest_backbone
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.layers.norm import FrozenBatchNorm
from reid.modeling.layers.splat import SplitAttentionConv2d, radix_softmax
from toys import backbone_cfg, error_message

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = {"50x": (3, 4, 6, 3), "101x": (3, 4, 23, 3), "200x": (3, 24, 36, 3),
          "269x": (3, 30, 48, 8)}
STEM = {"50x": 32, "101x": 64, "200x": 64, "269x": 64}
# ImageNet model sizes in millions, classifier included, as published for ResNeSt
PUBLISHED_MILLIONS = {"50x": 27.5, "101x": 48.3, "200x": 70.2, "269x": 110.9}


def make_cfg(depth="50x", **backbone):
    return backbone_cfg(NAME="build_resnest_backbone", DEPTH=depth, **backbone)


# --- the layout written out from the ResNeSt recipe, independently of the module ----------------

def norm_entries(prefix, channels):
    """(name, shape, is_parameter) of a BatchNorm2d."""
    return [(f"{prefix}.weight", (channels,), True), (f"{prefix}.bias", (channels,), True),
            (f"{prefix}.running_mean", (channels,), False),
            (f"{prefix}.running_var", (channels,), False),
            (f"{prefix}.num_batches_tracked", (), False)]


def block_entries(prefix, in_ch, width, first):
    """One bottleneck: radix 2, cardinality 1, so the 3x3 conv has 2 groups of width/2 inputs."""
    inter = max(width * 2 // 4, 32)
    out = width * 4
    entries = [(f"{prefix}.conv1.weight", (width, in_ch, 1, 1), True)]
    entries += norm_entries(f"{prefix}.bn1", width)
    entries += [(f"{prefix}.conv2.conv.weight", (2 * width, width // 2, 3, 3), True)]
    entries += norm_entries(f"{prefix}.conv2.bn0", 2 * width)
    entries += [(f"{prefix}.conv2.fc1.weight", (inter, width, 1, 1), True),
                (f"{prefix}.conv2.fc1.bias", (inter,), True)]
    entries += norm_entries(f"{prefix}.conv2.bn1", inter)
    entries += [(f"{prefix}.conv2.fc2.weight", (2 * width, inter, 1, 1), True),
                (f"{prefix}.conv2.fc2.bias", (2 * width,), True),
                (f"{prefix}.conv3.weight", (out, width, 1, 1), True)]
    entries += norm_entries(f"{prefix}.bn3", out)
    if first:  # downsample.0 is the parameter-free average pool
        entries += [(f"{prefix}.downsample.1.weight", (out, in_ch, 1, 1), True)]
        entries += norm_entries(f"{prefix}.downsample.2", out)
    return entries


def expected_entries(depth):
    stem = STEM[depth]
    entries = [("conv1.0.weight", (stem, 3, 3, 3), True)] + norm_entries("conv1.1", stem)
    entries += [("conv1.3.weight", (stem, stem, 3, 3), True)] + norm_entries("conv1.4", stem)
    entries += [("conv1.6.weight", (2 * stem, stem, 3, 3), True)] + norm_entries("bn1", 2 * stem)
    in_ch = 2 * stem
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth]), start=1):
        for i in range(blocks):
            entries += block_entries(f"layer{stage}.{i}", in_ch, width, first=i == 0)
            in_ch = width * 4
    return entries


def count(shape):
    return int(torch.Size(shape).numel())


def formula_parameter_count(depth):
    return sum(count(shape) for _, shape, is_param in expected_entries(depth) if is_param)


# --- structure ----------------------------------------------------------------------------------

def test_resnest50_parameter_count_equals_the_layer_formula():
    backbone = build_backbone(make_cfg("50x"))
    ours = sum(p.numel() for p in backbone.parameters())
    assert ours == formula_parameter_count("50x") == 25_434_240


@pytest.mark.parametrize("depth", ["50x", "101x"])
def test_state_dict_names_and_shapes_are_fastreids(depth):
    ours = {k: tuple(v.shape) for k, v in build_backbone(make_cfg(depth)).state_dict().items()}
    assert ours == {name: shape for name, shape, _ in expected_entries(depth)}


@pytest.mark.parametrize("depth", list(BLOCKS))
def test_sizes_match_the_published_imagenet_models(depth):
    classifier = 2048 * 1000 + 1000
    ours = formula_parameter_count(depth)
    if depth in ("50x", "101x"):
        # the deep ones are only counted, to keep the test fast; 50x/101x are built above
        ours = sum(p.numel() for p in build_backbone(make_cfg(depth)).parameters())
    assert round((ours + classifier) / 1e6, 1) == PUBLISHED_MILLIONS[depth]


@pytest.mark.parametrize("depth, batch", [("50x", 2), ("101x", 2), ("200x", 1), ("269x", 1)])
def test_each_depth_builds_and_returns_2048_channels(depth, batch):
    backbone = build_backbone(make_cfg(depth)).eval()
    if depth in ("200x", "269x"):
        assert sum(p.numel() for p in backbone.parameters()) == formula_parameter_count(depth)
    with torch.no_grad():
        out = backbone(torch.randn(batch, 3, 64, 32))
    assert backbone.out_channels == 2048
    assert out.shape == (batch, 2048, 4, 2)
    assert backbone.description == f"resnest {depth}"


# 64 x 32: stride 16 -> 4 x 2, stride 32 -> 2 x 1. 72 x 36 is odd from stage 2 on (18 x 9): the
# avd pool (3x3, pad 1) and the shortcut's ceil-mode pool must agree, or the residual sum fails.
@pytest.mark.parametrize("size, last_stride, grid", [
    ((64, 32), 1, (4, 2)), ((64, 32), 2, (2, 1)), ((72, 36), 1, (5, 3)), ((72, 36), 2, (3, 2))])
def test_output_size_obeys_last_stride(size, last_stride, grid):
    backbone = build_backbone(make_cfg(LAST_STRIDE=last_stride)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, *size))
    assert out.shape[-2:] == grid


def test_forward_and_backward_reach_every_parameter():
    backbone = build_backbone(make_cfg()).train()
    images = torch.randn(2, 3, 64, 32, requires_grad=True)
    backbone(images).square().mean().backward()
    for name, param in backbone.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert backbone.conv1[0].weight.grad.abs().sum() > 0
    assert images.grad.abs().sum() > 0


def test_avd_pools_after_split_attention_in_each_stages_first_block_but_stage_1s():
    backbone = build_backbone(make_cfg(LAST_STRIDE=1)).eval()
    assert backbone.layer1[0].avd_layer is None and backbone.layer2[1].avd_layer is None
    block = backbone.layer4[0]  # stride 1 here, yet pooled 3x3 like the released weights
    randomise(block, seed=5)
    x = torch.randn(1, 1024, 5, 3)
    with torch.no_grad():
        mid = block.conv2(torch.relu(block.bn1(block.conv1(x))))
        pooled = F.avg_pool2d(mid, 3, stride=1, padding=1)  # count_include_pad, as nn.AvgPool2d
        reference = torch.relu(block.bn3(block.conv3(pooled)) + block.downsample(x))
        torch.testing.assert_close(block(x), reference)


def test_every_norm_layer_follows_model_backbone_norm():
    backbone = build_backbone(make_cfg(NORM="FrozenBN")).eval()
    frozen = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm)]
    # stem 3 + per block bn1, bn0, attention bn1, bn3 + one shortcut norm per stage
    assert len(frozen) == 3 + 4 * sum(BLOCKS["50x"]) + 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert backbone(torch.randn(1, 3, 64, 32)).shape == (1, 2048, 4, 2)


def test_registered_under_fastreids_name():
    assert BACKBONE_REGISTRY.get("build_resnest_backbone") is resnest.build_resnest_backbone


def test_fastreids_bot_s50_config_builds_a_model_with_its_key_names(tmp_path):
    # FastReID 1.4's configs/Market1501/bagtricks_S50.yml, unchanged but for the _BASE_ path
    base = Path(__file__).resolve().parent.parent / "params" / "Base-bagtricks.yml"
    config = tmp_path / "bagtricks_S50.yml"
    config.write_text(f'_BASE_: "{base}"\n\nMODEL:\n  BACKBONE:\n'
                      '    NAME: "build_resnest_backbone"\n\n'
                      'DATASETS:\n  NAMES: ("Market1501",)\n  TESTS: ("Market1501",)\n\n'
                      'OUTPUT_DIR: "logs/market1501/bagtricks_S50"\n')
    cfg = load_config(str(config), ["MODEL.BACKBONE.PRETRAIN", "False",
                                    "MODEL.HEADS.NUM_CLASSES", "751"])
    state = build_model(cfg).state_dict()
    backbone = {k[len("backbone."):]: tuple(v.shape) for k, v in state.items()
                if k.startswith("backbone.")}
    assert backbone == {name: shape for name, shape, _ in expected_entries("50x")}


# --- errors -------------------------------------------------------------------------------------

def test_bad_depth_is_one_clear_line():
    assert error_message(build_backbone, make_cfg("34x")) == (
        "MODEL.BACKBONE.DEPTH '34x' is not a ResNeSt depth; expected one of 50x, 101x, 200x, 269x")


def test_depth_without_x_is_accepted():
    assert build_backbone(make_cfg("50")).description == "resnest 50x"


def test_group_norm_is_refused():
    message = error_message(build_backbone, make_cfg(NORM="GN"))  # one line
    assert message.startswith("MODEL.BACKBONE.NORM 'GN' does not work with ResNeSt")


def test_with_se_is_refused():
    with pytest.raises(ReidError, match=r"^MODEL.BACKBONE.WITH_SE True is not supported by "
                                        r"build_resnest_backbone .*; set it to False$"):
        build_backbone(make_cfg(WITH_SE=True))


# --- split attention against a brute force ------------------------------------------------------

def randomise(module, seed=0):
    """Random weights and BN statistics, so no term of the layer can hide behind an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        for tensor in list(module.parameters()) + buffers:
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5 if tensor.dim() == 1
                         else torch.randn(tensor.shape, generator=gen) * 0.5)


def brute_bn(x, bn, offset=0):
    """Eval-mode batch norm, channel by channel, with the statistics of channels ``offset..``."""
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        j = offset + c
        scale = bn.weight[j] / torch.sqrt(bn.running_var[j] + bn.eps)
        out[:, c] = (x[:, c] - bn.running_mean[j]) * scale + bn.bias[j]
    return out


def brute_conv(x, weight, padding):
    """Plain convolution by explicit sums over input channels and kernel offsets."""
    batch, in_ch, height, width = x.shape
    out_ch, _, k, _ = weight.shape
    padded = F.pad(x, (padding,) * 4)
    out = torch.zeros(batch, out_ch, height + 2 * padding - k + 1, width + 2 * padding - k + 1)
    for o in range(out_ch):
        for i in range(in_ch):
            for dy in range(k):
                for dx in range(k):
                    out[:, o] += weight[o, i, dy, dx] * padded[:, i, dy:dy + out.shape[2],
                                                               dx:dx + out.shape[3]]
    return out


def brute_split_attention(x, layer):
    """Radix 2, one group: split r convolves input half r into output half r."""
    channels = layer.fc1.in_channels
    in_half = x.shape[1] // 2
    splits = []
    for r in range(2):
        weight = layer.conv.weight[r * channels:(r + 1) * channels]
        conv = brute_conv(x[:, r * in_half:(r + 1) * in_half], weight, padding=1)
        splits.append(torch.relu(brute_bn(conv, layer.bn0, offset=r * channels)))
    pooled = (splits[0] + splits[1]).mean(dim=(2, 3))                        # B x C
    hidden = pooled @ layer.fc1.weight[:, :, 0, 0].T + layer.fc1.bias          # B x inter
    hidden = brute_bn(hidden[:, :, None, None], layer.bn1)[:, :, 0, 0].relu()
    logits = hidden @ layer.fc2.weight[:, :, 0, 0].T + layer.fc2.bias         # B x 2C
    out = torch.zeros_like(splits[0])
    for c in range(channels):
        a, b = logits[:, c], logits[:, channels + c]                          # split 0, split 1
        w0 = torch.exp(a) / (torch.exp(a) + torch.exp(b))
        out[:, c] = w0[:, None, None] * splits[0][:, c] + (1 - w0)[:, None, None] * splits[1][:, c]
    return out


def test_split_attention_matches_brute_force():
    layer = SplitAttentionConv2d(4, 4, 3, padding=1, bias=False, radix=2, groups=1).eval()
    randomise(layer)
    x = torch.randn(2, 4, 5, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = layer(x)
        reference = brute_split_attention(x, layer)
    assert ours.shape == (2, 4, 5, 3)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_split_attention_strides_and_sizes_its_attention_branch():
    layer = SplitAttentionConv2d(8, 6, 3, stride=2, padding=1, radix=2)
    assert layer.fc1.out_channels == 32  # max(8 * 2 // 4, 32)
    assert SplitAttentionConv2d(256, 256, 3, radix=2).fc1.out_channels == 128
    assert layer(torch.randn(2, 8, 7, 5)).shape == (2, 6, 4, 3)


def test_radix_softmax_reorders_groups_to_the_conv_layout():
    # logits come as (group, split, channel); weights must come as (split, group, channel)
    groups, radix, per_group = 2, 3, 2
    logits = torch.randn(1, groups * radix * per_group)
    weights = radix_softmax(logits, radix, groups)[0]
    for g in range(groups):
        for c in range(per_group):
            column = torch.stack([logits[0, (g * radix + r) * per_group + c] for r in range(radix)])
            expected = torch.exp(column) / torch.exp(column).sum()
            got = torch.stack([weights[(r * groups + g) * per_group + c] for r in range(radix)])
            torch.testing.assert_close(got, expected)


# --- IBN and non-local --------------------------------------------------------------------------

def test_ibn_sits_in_every_blocks_bn1_in_all_four_stages():
    backbone = build_backbone(make_cfg(WITH_IBN=True))
    state = backbone.state_dict()
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS["50x"]), start=1):
        for i in range(blocks):
            prefix = f"layer{stage}.{i}.bn1"
            assert state[f"{prefix}.IN.weight"].shape == (width // 2,)
            assert state[f"{prefix}.BN.running_mean"].shape == (width - width // 2,)
            assert f"{prefix}.IN.running_mean" not in state  # IN keeps no running stats
    # IN(c/2) + BN(c/2) has as many parameters as BN(c)
    assert sum(p.numel() for p in backbone.parameters()) == formula_parameter_count("50x")
    assert backbone.eval()(torch.randn(1, 3, 64, 32)).shape == (1, 2048, 4, 2)


def test_non_local_blocks_follow_the_last_blocks_of_stages_2_and_3():
    backbone = build_backbone(make_cfg(WITH_NL=True)).eval()
    keys = {".".join(k.split(".")[:2]) for k in backbone.state_dict() if k.startswith("NL_")}
    assert keys == {"NL_2.0", "NL_2.1", "NL_3.0", "NL_3.1", "NL_3.2"}
    assert backbone.state_dict()["NL_3.0.g.weight"].shape == (1, 1024, 1, 1)  # FastReID width 1
    order = []
    for name, module in backbone.named_modules():
        if name.count(".") == 1 and name.split(".")[0] in ("layer2", "layer3", "NL_2", "NL_3"):
            module.register_forward_hook(lambda *_, name=name: order.append(name))
    backbone(torch.randn(1, 3, 64, 32))
    assert order == ["layer2.0", "layer2.1", "layer2.2", "NL_2.0", "layer2.3", "NL_2.1",
                     "layer3.0", "layer3.1", "layer3.2", "layer3.3", "NL_3.0",
                     "layer3.4", "NL_3.1", "layer3.5", "NL_3.2"]


def test_non_local_starts_as_the_identity():
    plain = build_backbone(make_cfg()).eval()
    with_nl = build_backbone(make_cfg(WITH_NL=True)).eval()
    result = with_nl.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith("NL_") for k in result.missing_keys)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(with_nl(x), plain(x))


# --- ImageNet weights ---------------------------------------------------------------------------

def release_file(path):
    """A file shaped like resnest50-528c19ca.pth: FastReID's names plus the ImageNet ``fc``."""
    gen = torch.Generator().manual_seed(7)
    state = {name: torch.randn(shape, generator=gen) if is_param else
             (torch.tensor(5) if name.endswith("num_batches_tracked") else torch.rand(shape) + 0.5)
             for name, shape, is_param in expected_entries("50x")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def assert_loaded(backbone, state):
    ours = backbone.state_dict()
    assert set(ours) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in ours.items():
        assert torch.equal(value, state[key]), key


def test_release_file_loads_from_pretrain_path(offline, tmp_path, caplog):
    state = release_file(tmp_path / "weights.pth")
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(make_cfg(PRETRAIN=True,
                                           PRETRAIN_PATH=str(tmp_path / "weights.pth")))
    assert_loaded(backbone, state)
    assert caplog.text == ""  # no missing or unused keys


def test_release_file_loads_from_the_torch_hub_cache(offline):
    name = Path(resnest.release_urls(resnest.ARCHS["50x"])[0]).name
    assert name == "resnest50-528c19ca.pth"
    state = release_file(offline / "checkpoints" / name)
    assert_loaded(build_backbone(make_cfg(PRETRAIN=True)), state)


def test_no_weights_anywhere_trains_from_scratch(offline, caplog):
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(make_cfg(PRETRAIN=True))
    assert "training from scratch" in caplog.text and "resnest50-528c19ca.pth" in caplog.text
    assert backbone.out_channels == 2048
