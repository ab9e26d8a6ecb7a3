"""Normalisation layers (BN, GhostBN, FrozenBN, GN) and the clipped average pooling."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.resnet import build_resnet_backbone
from reid.modeling.heads import build_heads
from reid.modeling.layers.norm import FrozenBatchNorm, GhostBatchNorm, get_norm
from reid.modeling.layers.pooling import POOLING_REGISTRY
from toys import backbone_cfg

EPS = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_affine(bn: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=g))


def normalise_by_hand(x, mean, var, weight, bias):
    """(x - mean) / sqrt(var + eps) * weight + bias with per-channel vectors."""
    view = (1, -1, 1, 1)
    return (x - mean.view(view)) / (var.view(view) + EPS).sqrt() * weight.view(view) \
        + bias.view(view)


# --------------------------------------------------------------------------- get_norm
@pytest.mark.parametrize("name, kind", [("BN", nn.BatchNorm2d), ("syncBN", nn.BatchNorm2d),
                                        ("GhostBN", GhostBatchNorm),
                                        ("FrozenBN", FrozenBatchNorm), ("GN", nn.GroupNorm)])
def test_get_norm_builds_fastreid_names(name, kind):
    layer = get_norm(name, 64)
    assert isinstance(layer, kind)


def test_unknown_norm_names_the_closest():
    with pytest.raises(ReidError, match="unknown normalisation layer 'GhostBn'.*'GhostBN'"):
        get_norm("GhostBn", 8)


# --------------------------------------------------------------------------- GhostBN
def test_ghost_bn_normalises_each_virtual_batch_with_its_own_statistics():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 2, 2) * 3 + 1
    ghost = get_norm("GhostBN", 3, num_splits=2)
    randomise_affine(ghost)
    out = ghost.train()(x)
    momentum = ghost.momentum
    expected_mean, expected_var = torch.zeros(3), torch.ones(3)
    for split in range(2):
        # FastReID's virtual batch j: samples j, j + 2, j + 4
        part = x[split::2]
        mean = part.mean(dim=(0, 2, 3))
        var = part.var(dim=(0, 2, 3), unbiased=False)
        manual = normalise_by_hand(part, mean, var, ghost.weight, ghost.bias)
        assert torch.allclose(out[split::2], manual, atol=1e-5)
        unbiased = part.var(dim=(0, 2, 3), unbiased=True)
        expected_mean += momentum * mean / 2
        expected_var += momentum * (unbiased - 1.0) / 2
    # running statistics: the mean over splits of the per-split momentum updates
    assert torch.allclose(ghost.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(ghost.running_var, expected_var, atol=1e-5)
    assert int(ghost.num_batches_tracked) == 1
    # differs from plain BN over the whole batch
    assert not torch.allclose(out, F.batch_norm(x, None, None, ghost.weight, ghost.bias, True),
                              atol=1e-3)


def test_ghost_bn_in_eval_uses_running_statistics():
    ghost = GhostBatchNorm(3, num_splits=2)
    randomise_affine(ghost, seed=1)
    with torch.no_grad():
        ghost.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        ghost.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    x = torch.randn(3, 3, 2, 2)  # 3 samples: eval needs no split
    expected = normalise_by_hand(x, ghost.running_mean, ghost.running_var, ghost.weight,
                                 ghost.bias)
    assert torch.allclose(ghost.eval()(x), expected, atol=1e-5)


def test_ghost_bn_with_one_split_is_batch_norm():
    torch.manual_seed(1)
    x = torch.randn(4, 5, 3, 3)
    ghost, bn = get_norm("GhostBN", 5), nn.BatchNorm2d(5)
    assert ghost.num_splits == 1  # FastReID's default
    assert torch.allclose(ghost.train()(x), bn.train()(x), atol=1e-6)
    assert torch.allclose(ghost.running_var, bn.running_var, atol=1e-6)
    assert set(ghost.state_dict()) == set(bn.state_dict())


def test_ghost_bn_cumulative_average_for_precise_bn():
    """momentum None (precise-BN): running mean = mean of the batches' split means."""
    torch.manual_seed(2)
    ghost = GhostBatchNorm(2, num_splits=2, momentum=None).train()
    batches = [torch.randn(4, 2, 2, 2) + i for i in range(3)]
    for x in batches:
        ghost(x)
    split_means = [x[s::2].mean(dim=(0, 2, 3)) for x in batches for s in range(2)]
    assert torch.allclose(ghost.running_mean, torch.stack(split_means).mean(0), atol=1e-5)


def test_ghost_bn_batch_must_divide_into_splits():
    with pytest.raises(ReidError, match="GhostBN with 4 splits needs a batch size divisible "
                                        "by 4; got 6"):
        GhostBatchNorm(3, num_splits=4).train()(torch.randn(6, 3, 2, 2))


# --------------------------------------------------------------------------- FrozenBN
def bn_with_statistics(channels: int, seed: int = 3) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    randomise_affine(bn, seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
        bn.num_batches_tracked.fill_(7)
    return bn


def test_frozen_bn_loads_bn_keys_and_applies_the_affine_formula():
    bn = bn_with_statistics(4)
    frozen = get_norm("FrozenBN", 4)
    result = frozen.load_state_dict(bn.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    expected = normalise_by_hand(x, bn.running_mean, bn.running_var, bn.weight, bn.bias)
    for mode in (True, False):  # train mode changes nothing
        assert torch.allclose(frozen.train(mode)(x), expected, atol=1e-5)
    assert torch.equal(frozen.running_mean, bn.running_mean)  # not updated by the forwards
    assert list(frozen.parameters()) == []
    frozen(x).sum().backward()  # gradients still flow to the input
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_frozen_bn_starts_as_identity_and_fills_missing_statistics():
    frozen = FrozenBatchNorm(3)
    x = torch.randn(2, 3, 2, 2)
    assert torch.allclose(frozen(x), x, atol=1e-6)
    # a Caffe2-style checkpoint: only weight and bias; statistics stay the identity
    frozen.load_state_dict({"weight": torch.full((3,), 2.0), "bias": torch.ones(3)})
    assert torch.allclose(frozen(x), 2 * x + 1, atol=1e-5)


def test_frozen_bn_is_left_alone_by_sync_bn_conversion():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), FrozenBatchNorm(4))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], FrozenBatchNorm)


def resnet_cfg(norm: str):
    return backbone_cfg(DEPTH="18x", FEAT_DIM=512, NORM=norm)


def test_frozen_bn_resnet_loads_a_bn_checkpoint_by_name():
    torch.manual_seed(4)
    bn_net = build_resnet_backbone(resnet_cfg("BN"))
    for module in bn_net.modules():  # non-trivial statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    frozen_net = build_resnet_backbone(resnet_cfg("FrozenBN"))
    frozen_net.load_state_dict(bn_net.state_dict(), strict=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen_net.modules())
    trainable = {n for n, _ in frozen_net.named_parameters()}
    assert trainable and not any(".bn" in n or "downsample.1" in n for n in trainable)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(frozen_net.train()(x), bn_net.eval()(x), atol=1e-4)


# --------------------------------------------------------------------------- GroupNorm
def test_group_norm_uses_32_groups():
    torch.manual_seed(5)
    gn = get_norm("GN", 64)
    randomise_affine(gn)
    x = torch.randn(2, 64, 3, 3)
    assert gn.num_groups == 32
    assert torch.allclose(gn(x), F.group_norm(x, 32, gn.weight, gn.bias, EPS), atol=1e-6)
    # by hand for group 0 (channels 0 and 1) of sample 0
    group = x[0, :2]
    manual = (group - group.mean()) / (group.var(unbiased=False) + EPS).sqrt()
    manual = manual * gn.weight[:2].view(-1, 1, 1) + gn.bias[:2].view(-1, 1, 1)
    assert torch.allclose(gn(x)[0, :2], manual, atol=1e-5)


def test_group_norm_channels_must_divide_into_groups():
    with pytest.raises(ReidError, match="norm 'GN' uses 32 groups .* got 48 channels"):
        get_norm("GN", 48)


@pytest.mark.parametrize("norm", ["FrozenBN", "GN", "GhostBN"])
def test_heads_build_with_every_norm(norm):
    cfg = backbone_cfg(FEAT_DIM=64)
    cfg.MODEL.HEADS.NUM_CLASSES = 3
    cfg.MODEL.HEADS.NORM = norm
    head = build_heads(cfg).eval()
    assert head(torch.randn(2, 64, 4, 2)).shape == (2, 64)


# --------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("name", ["clipavgpool", "ClipGlobalAvgPool", "ClipGlobalAvgPool2d"])
def test_clip_avg_pool_clamps_the_average_to_unit_interval(name):
    x = torch.tensor([[[[-1.0, -1.0], [-1.0, -1.0]],     # mean -1  -> 0
                       [[0.2, 0.4], [0.6, 0.8]],         # mean 0.5 -> 0.5
                       [[2.0, 2.0], [4.0, 4.0]],         # mean 3   -> 1
                       [[-3.0, 1.0], [1.0, 2.0]]]])      # mean 0.25 (negatives averaged first)
    out = POOLING_REGISTRY.get(name)()(x)
    assert out.shape == (1, 4, 1, 1)
    assert out.flatten().tolist() == pytest.approx([0.0, 0.5, 1.0, 0.25])
