"""ViT backbone (FastReID / TransReID layout) and timm backbones ("timm:<name>")."""
import logging
import sys

import numpy as np
import pytest
import torch

from reid.errors import ReidError
from reid.modeling.backbones import vit
from reid.modeling.backbones.build import build_backbone
from reid.modeling.backbones.timm_backbone import build_timm_backbone
from reid.modeling.backbones.vit import (DropPath, ViTArch, VisionTransformer, build_vit_backbone,
                                         infer_grid, resize_pos_embed)
from toys import backbone_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 768  # FastReID's small and base are both 768 wide
# a narrow stand-in registered as depth "tiny" so behaviour tests run in milliseconds; only the
# tests about FastReID's own sizes build "small" / "base"
TINY_DIM = 32
TINY_ARCH = ViTArch(depth=8, num_heads=2, mlp_ratio=2.0, qkv_bias=True, qk_scale=None,
                    embed_dim=TINY_DIM)


@pytest.fixture(autouse=True)
def tiny_depth(monkeypatch):
    monkeypatch.setitem(vit.ARCHS, "tiny", TINY_ARCH)


def vit_cfg(depth="tiny", size=(64, 32), stride=(16, 16), **backbone):
    cfg = backbone_cfg(**{"NAME": "build_vit_backbone", "DEPTH": depth,
                          "FEAT_DIM": TINY_DIM if depth == "tiny" else DIM,
                          "STRIDE_SIZE": list(stride), **backbone})
    cfg.INPUT.SIZE_TRAIN = list(size)
    return cfg


@pytest.fixture
def tiny_vit():
    torch.manual_seed(0)
    return build_vit_backbone(vit_cfg())


# ---------------------------------------------------------------- shapes and training

def test_small_vit_forward_backward_at_tiny_input():
    torch.manual_seed(0)
    small_vit = build_vit_backbone(vit_cfg("small"))
    images = torch.randn(2, 3, 64, 32)
    out = small_vit.train()(images)
    # the class token as a B x C x 1 x 1 map, what EmbeddingHead's pooling expects
    assert out.shape == (2, DIM, 1, 1)
    out.square().mean().backward()
    without_grad = [n for n, p in small_vit.named_parameters() if p.grad is None]
    assert without_grad == []
    assert all(torch.isfinite(p.grad).all() for p in small_vit.parameters())
    # FastReID's small scales attention by the full width, base by the head width
    assert small_vit.blocks[0].attn.scale == pytest.approx(768 ** -0.5)


ONE_BLOCK = ViTArch(depth=1, num_heads=2, mlp_ratio=1.0, qkv_bias=True, qk_scale=None, embed_dim=8)


@pytest.mark.parametrize("size, stride, grid", [
    ((64, 32), (16, 16), (4, 2)),    # (64-16)//16+1, (32-16)//16+1
    ((64, 32), (12, 12), (5, 2)),    # overlapping: (64-16)//12+1 = 5, (32-16)//12+1 = 2
    ((256, 128), (12, 12), (21, 10)),  # TransReID's Market setting
])
def test_patch_grid_and_position_embedding_follow_the_stride(size, stride, grid):
    model = VisionTransformer(ONE_BLOCK, size, stride)
    assert model.patch_embed.grid == grid
    assert model.pos_embed.shape == (1, grid[0] * grid[1] + 1, 8)
    assert model.patch_embed.proj.stride == stride
    tokens, seen = model.patch_embed(torch.zeros(1, 3, *size))
    assert seen == grid and tokens.shape == (1, grid[0] * grid[1], 8)


def test_registered_and_built_through_build_backbone():
    backbone = build_backbone(vit_cfg())
    assert isinstance(backbone, VisionTransformer) and backbone.out_channels == TINY_DIM
    with pytest.raises(ReidError, match=r"MODEL.BACKBONE.FEAT_DIM is 2048 but vit tiny outputs "
                                        r"32 channels"):
        build_backbone(vit_cfg(FEAT_DIM=2048))


def test_unknown_depth_lists_choices():
    with pytest.raises(ReidError, match=r"MODEL.BACKBONE.DEPTH 'large' is not a ViT depth for "
                                        r"build_vit_backbone; expected one of small, base, tiny"):
        build_vit_backbone(vit_cfg("large"))


def test_input_smaller_than_a_patch_is_an_error():
    with pytest.raises(ReidError, match=r"INPUT.SIZE_TRAIN \[8, 32\] is smaller than the ViT's "
                                        r"16 x 16 patch"):
        build_vit_backbone(vit_cfg(size=(8, 32)))


# ---------------------------------------------------------------- parameter count and names

def expected_params(depth, embed_hw_grid, cameras=0):
    """Parameter count of FastReID's ViT written out from the architecture table."""
    blocks, mlp_ratio, qkv_bias = {"small": (8, 3.0, False), "base": (12, 4.0, True)}[depth]
    d, hidden = DIM, int(DIM * mlp_ratio)
    patch_embed = 3 * 16 * 16 * d + d
    block = (2 * d                                  # norm1
             + 3 * d * d + (3 * d if qkv_bias else 0)  # attn.qkv
             + d * d + d                            # attn.proj
             + 2 * d                                # norm2
             + d * hidden + hidden                  # mlp.fc1
             + hidden * d + d)                      # mlp.fc2
    tokens = embed_hw_grid[0] * embed_hw_grid[1] + 1
    return patch_embed + blocks * block + 2 * d + d + tokens * d + cameras * d


def fastreid_names(depth, cameras=0):
    blocks, qkv_bias = {"small": (8, False), "base": (12, True)}[depth]
    names = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
             "norm.weight", "norm.bias"}
    if cameras:
        names.add("sie_embed")
    for i in range(blocks):
        for layer in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            names |= {f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"}
        names.add(f"blocks.{i}.attn.qkv.weight")
        if qkv_bias:
            names.add(f"blocks.{i}.attn.qkv.bias")
    return names


@pytest.mark.parametrize("depth, cameras, total", [
    ("small", 0, 47_933_184), ("base", 0, 85_746_432), ("base", 6, 85_746_432 + 6 * 768)])
def test_parameter_count_and_names_at_256x128(depth, cameras, total):
    cfg = vit_cfg(depth, size=(256, 128), SIE_CAMERAS=cameras)
    model = build_vit_backbone(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_params(depth, (16, 8), cameras) == total
    assert set(model.state_dict()) == fastreid_names(depth, cameras)


# ---------------------------------------------------------------- position embedding resize

def grid_embedding(values, cls_value=9.0):
    """1 x (1 + N) x 1 position embedding with the cls entry and a row-major grid."""
    flat = [cls_value] + [v for row in values for v in row]
    return torch.tensor(flat).view(1, -1, 1)


def test_resize_pos_embed_by_hand_on_a_2x2_grid():
    pos = grid_embedding([[1.0, 2.0], [3.0, 4.0]])
    # bilinear, half-pixel centres: a 2 -> 4 resample samples source positions
    # -0.25, 0.25, 0.75, 1.25 (clamped) -> weights [a, .75a+.25b, .25a+.75b, b]
    expected = [[1.0, 1.25, 1.75, 2.0],
                [1.5, 1.75, 2.25, 2.5],
                [2.5, 2.75, 3.25, 3.5],
                [3.0, 3.25, 3.75, 4.0]]
    out = resize_pos_embed(pos, (4, 4))
    assert out[0, 0, 0] == 9.0
    assert torch.allclose(out[0, 1:, 0].view(4, 4), torch.tensor(expected))
    # rows only: 2x2 -> 4x2
    out = resize_pos_embed(pos, (4, 2))
    assert torch.allclose(out[0, 1:, 0].view(4, 2),
                          torch.tensor([[1.0, 2.0], [1.5, 2.5], [2.5, 3.5], [3.0, 4.0]]))
    # same grid: unchanged
    assert torch.equal(resize_pos_embed(pos, (2, 2)), pos)


def test_resize_keeps_channels_separate():
    pos = torch.cat([grid_embedding([[1.0, 2.0], [3.0, 4.0]]),
                     grid_embedding([[10.0, 10.0], [10.0, 10.0]], cls_value=-1.0)], dim=2)
    out = resize_pos_embed(pos, (3, 3))
    assert torch.allclose(out[0, 1:, 1], torch.full((9,), 10.0))
    assert out[0, 0, 1] == -1.0


@pytest.mark.parametrize("count, target, grid", [
    (196, (16, 8), (14, 14)),   # ImageNet 224 / 16: square
    (128, (24, 8), (16, 8)),    # a 256x128 re-id checkpoint used at 384x128
    (210, (16, 8), (21, 10)),   # a stride-12 256x128 checkpoint
])
def test_saved_grid_is_inferred(count, target, grid):
    assert infer_grid(count, target) == grid


def test_imagenet_pos_embed_is_resized_when_loading(tmp_path):
    model = build_vit_backbone(vit_cfg())  # grid 4 x 2
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["pos_embed"] = grid_embedding([[1.0, 2.0], [3.0, 4.0]]).expand(1, 5, TINY_DIM).clone()
    state["head.weight"] = torch.zeros(1000, TINY_DIM)  # ImageNet classifier: ignored
    state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "vit_imagenet.pth"
    torch.save(state, path)

    loaded = build_vit_backbone(vit_cfg(PRETRAIN=True, PRETRAIN_PATH=str(path)))
    expected = torch.tensor([9.0, 1.0, 2.0, 1.5, 2.5, 2.5, 3.5, 3.0, 4.0])
    assert torch.allclose(loaded.pos_embed[0, :, 0], expected)
    assert torch.allclose(loaded.pos_embed[0, :, -1], expected)
    assert torch.equal(loaded.blocks[3].mlp.fc2.weight, state["blocks.3.mlp.fc2.weight"])


def test_input_of_another_size_uses_the_resized_grid(tiny_vit):
    # a model built for 64x32 (4x2 grid) run at 96x32 (6x2 grid) behaves like a model built
    # for 96x32 whose position embedding is the resampled one
    tiny_vit.eval()
    other = build_vit_backbone(vit_cfg(size=(96, 32)))
    state = dict(tiny_vit.state_dict())
    state["pos_embed"] = resize_pos_embed(tiny_vit.pos_embed.detach(), (6, 2))
    other.load_state_dict(state)
    images = torch.randn(2, 3, 96, 32)
    with torch.no_grad():
        assert torch.allclose(tiny_vit(images), other.eval()(images), atol=1e-5)


# ---------------------------------------------------------------- side-information embedding

def test_sie_adds_coefficient_times_camera_embedding():
    torch.manual_seed(1)
    coe = 3.0
    model = build_vit_backbone(vit_cfg(SIE_CAMERAS=3, SIE_COE=coe)).eval()
    assert model.takes_camids and model.sie_embed.shape == (3, 1, TINY_DIM)
    plain = build_vit_backbone(vit_cfg()).eval()
    assert not plain.takes_camids
    images = torch.randn(2, 3, 64, 32)
    camids = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(images, camids)
        for b, cam in enumerate(camids.tolist()):
            # reference: the same weights without SIE, the camera's embedding folded into
            # every token's position embedding
            state = {k: v for k, v in model.state_dict().items() if k != "sie_embed"}
            state["pos_embed"] = state["pos_embed"] + coe * model.sie_embed[cam]
            plain.load_state_dict(state)
            assert torch.allclose(out[b], plain(images[b:b + 1])[0], atol=1e-5)
        other_cams = model(images, torch.tensor([1, 1]))
    assert not torch.allclose(out, other_cams, atol=1e-3)


def test_sie_without_camids_or_with_unknown_camera_is_an_error():
    model = build_vit_backbone(vit_cfg(SIE_CAMERAS=2)).eval()
    images = torch.randn(1, 3, 64, 32)
    with pytest.raises(ReidError, match=r"camera embeddings \(MODEL.BACKBONE.SIE_CAMERAS 2\); "
                                        r"its forward needs the batch's camids"):
        model(images)
    with pytest.raises(ReidError, match=r"camids must lie in 0..1 \(MODEL.BACKBONE.SIE_CAMERAS "
                                        r"2\); got 2..2"):
        model(images, torch.tensor([2]))


# ---------------------------------------------------------------- stochastic depth, dropout

def test_drop_path_rates_increase_linearly_from_zero():
    model = build_vit_backbone(vit_cfg(DROP_PATH_RATIO=0.7))
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)  # rate 0 for block 0
    rates = [block.drop_path.drop_prob for block in model.blocks[1:]]
    assert rates == pytest.approx([0.1 * i for i in range(1, 8)])  # 0.7 * i / 7


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    layer = DropPath(0.25).train()
    x = torch.ones(4000, 3, 5)
    out = layer(x)
    per_sample = out.view(4000, -1)
    kept = per_sample[:, 0] != 0
    assert torch.allclose(per_sample[kept], torch.tensor(1 / 0.75))
    assert torch.all(per_sample[~kept] == 0)
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.03)
    assert torch.equal(layer.eval()(x), x)


def test_eval_mode_ignores_drop_path_and_dropouts(tiny_vit):
    regularised = build_vit_backbone(vit_cfg(DROP_PATH_RATIO=0.9, DROP_RATIO=0.5,
                                             ATT_DROP_RATE=0.5))
    regularised.load_state_dict(tiny_vit.state_dict())
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = tiny_vit.eval()(images)
        assert torch.equal(regularised.eval()(images), expected)
        # and in training mode they do act
        assert not torch.allclose(regularised.train()(images), expected, atol=1e-3)


# ---------------------------------------------------------------- weights files

def test_fastreid_checkpoint_loads_by_name(tiny_vit, tmp_path):
    model_state = {f"backbone.{k}": v for k, v in tiny_vit.state_dict().items()}
    model_state["heads.weight"] = torch.zeros(10, TINY_DIM)
    path = tmp_path / "model_final.pth"
    torch.save({"model": model_state, "iteration": 5}, path)
    loaded = build_vit_backbone(vit_cfg(PRETRAIN=True, PRETRAIN_PATH=str(path)))
    for key, value in tiny_vit.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def to_google_npz(model, path):
    """Write ``model``'s weights in Google's ViT .npz layout (the inverse of the loader's map)."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = s["cls_token"].shape[-1]
    heads = model.blocks[0].attn.num_heads
    arrays = {"embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
              "embedding/bias": s["patch_embed.proj.bias"], "cls": s["cls_token"],
              "Transformer/posembed_input/pos_embedding": s["pos_embed"],
              "Transformer/encoder_norm/scale": s["norm.weight"],
              "Transformer/encoder_norm/bias": s["norm.bias"],
              "head/kernel": np.zeros((dim, 5), np.float32)}
    for i in range(len(model.blocks)):
        b, g = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        att = g + "MultiHeadDotProductAttention_1/"
        q, k, v = np.split(s[b + "attn.qkv.weight"], 3, axis=0)
        qb, kb, vb = np.split(s[b + "attn.qkv.bias"], 3)
        for name, w, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            arrays[f"{att}{name}/kernel"] = w.T.reshape(dim, heads, dim // heads)
            arrays[f"{att}{name}/bias"] = bias.reshape(heads, dim // heads)
        arrays[att + "out/kernel"] = s[b + "attn.proj.weight"].T.reshape(heads, dim // heads, dim)
        arrays[att + "out/bias"] = s[b + "attn.proj.bias"]
        for flax, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            arrays[f"{g}{flax}/scale"] = s[f"{b}{ours}.weight"]
            arrays[f"{g}{flax}/bias"] = s[f"{b}{ours}.bias"]
        for flax, ours in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            arrays[f"{g}MlpBlock_3/{flax}/kernel"] = s[f"{b}mlp.{ours}.weight"].T
            arrays[f"{g}MlpBlock_3/{flax}/bias"] = s[f"{b}mlp.{ours}.bias"]
    np.savez(path, **arrays)


def test_google_npz_weights_load(tmp_path):
    arch = ViTArch(depth=2, num_heads=4, mlp_ratio=2.0, qkv_bias=True, qk_scale=None,
                   embed_dim=32)
    torch.manual_seed(0)
    source = VisionTransformer(arch, (32, 32), (16, 16))
    path = tmp_path / "ViT-tiny.npz"
    to_google_npz(source, path)
    torch.manual_seed(1)
    target = VisionTransformer(arch, (32, 32), (16, 16))
    vit.load_vit_weights(target, str(path))
    for key, value in source.state_dict().items():
        assert torch.allclose(target.state_dict()[key], value), key
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(target.eval()(images), source.eval()(images), atol=1e-6)


def test_pretrain_without_path_warns_and_trains_from_scratch(caplog):
    with caplog.at_level(logging.WARNING, logger="reid.modeling.backbones.vit"):
        build_vit_backbone(vit_cfg(PRETRAIN=True, PRETRAIN_PATH=""))
    assert "no ImageNet weights for vit tiny: set MODEL.BACKBONE.PRETRAIN_PATH" in caplog.text


def test_missing_pretrain_path_is_an_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(ReidError, match=rf"MODEL.BACKBONE.PRETRAIN_PATH {missing} does not "
                                        r"exist \(expected ViT weights"):
        build_vit_backbone(vit_cfg(PRETRAIN=True, PRETRAIN_PATH=str(missing)))


# ---------------------------------------------------------------- timm backbones

@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def timm_cfg(name, size=(64, 32), **backbone):
    cfg = backbone_cfg(NAME=f"timm:{name}", **backbone)
    cfg.INPUT.SIZE_TRAIN = list(size)
    return cfg


def test_timm_resnet18_gives_its_last_feature_map(timm):
    torch.manual_seed(0)
    backbone = build_timm_backbone(timm_cfg("resnet18"))
    assert backbone.out_channels == 512 == backbone.model.feature_info[-1]["num_chs"]
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = backbone.eval()(images)
        # stride 32: 64x32 -> 2x1, and exactly what timm's own forward_features returns
        assert out.shape == (2, 512, 2, 1)
        assert torch.equal(out, backbone.model.forward_features(images))
    assert backbone.description == "timm resnet18"


def test_timm_head_parameters_the_features_never_use_are_frozen(timm):
    backbone = build_timm_backbone(timm_cfg("mobilenetv3_small_050")).train()
    assert backbone.out_channels == backbone.model.feature_info[-1]["num_chs"] == 288
    frozen = sorted(n for n, p in backbone.model.named_parameters() if not p.requires_grad)
    assert frozen == ["conv_head.bias", "conv_head.weight"]
    out = backbone(torch.randn(2, 3, 64, 32))
    assert out.shape == (2, 288, 2, 1)
    out.mean().backward()
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)


def test_timm_vit_tokens_become_the_class_token_map(timm):
    torch.manual_seed(0)
    backbone = build_timm_backbone(timm_cfg("vit_tiny_patch16_224"))
    assert backbone.layout == "tokens" and backbone.out_channels == 192
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = backbone.eval()(images)
        tokens = backbone.model.forward_features(images)
    assert tokens.shape == (2, 1 + 4 * 2, 192)  # built for the 64x32 input: 4x2 patches
    assert out.shape == (2, 192, 1, 1)
    assert torch.equal(out[:, :, 0, 0], tokens[:, 0])  # timm's ViT pools the class token


def test_timm_weights_from_a_local_file(timm, tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18_timm.pth"
    torch.save(source.state_dict(), path)
    backbone = build_timm_backbone(timm_cfg("resnet18", PRETRAIN=True, PRETRAIN_PATH=str(path)))
    assert torch.equal(backbone.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_timm_download_failure_warns_and_trains_from_scratch(timm, monkeypatch, caplog):
    real_create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no network")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create)
    with caplog.at_level(logging.WARNING, logger="reid.modeling.backbones.timm_backbone"):
        backbone = build_timm_backbone(timm_cfg("mobilenetv3_small_050", PRETRAIN=True))
    assert backbone.out_channels == 288
    assert ("timm ImageNet weights for mobilenetv3_small_050 unavailable (OSError: no network); "
            "training from scratch") in caplog.text


def test_timm_missing_weights_file_is_an_error(timm, tmp_path):
    with pytest.raises(ReidError, match=r"MODEL.BACKBONE.PRETRAIN_PATH .*nope.pth does not exist "
                                        r"\(expected timm weights for resnet18"):
        build_timm_backbone(timm_cfg("resnet18", PRETRAIN=True,
                                     PRETRAIN_PATH=str(tmp_path / "nope.pth")))


def test_unknown_timm_model_names_the_closest(timm):
    with pytest.raises(ReidError, match=r"unknown timm model 'resnet1x8' in MODEL.BACKBONE.NAME; "
                                        r"did you mean 'resnet18'\?"):
        build_timm_backbone(timm_cfg("resnet1x8"))


def test_timm_prefix_without_a_model_is_an_error(timm):
    with pytest.raises(ReidError, match=r"MODEL.BACKBONE.NAME 'timm:' names no model"):
        build_timm_backbone(timm_cfg(""))


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ReidError) as err:
        build_timm_backbone(timm_cfg("resnet18"))
    message = str(err.value)
    assert "\n" not in message
    assert "need the timm package: pip install timm (or pip install 'reid-toolbox[timm]')" \
        in message
