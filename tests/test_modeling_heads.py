"""EmbeddingHead: FastReID layout, BNNeck, pooling and classification layers vs hand formulas."""
import math

import pytest
import torch

from reid.errors import ReidError
from reid.modeling import POOLING_REGISTRY, build_heads
from toys import backbone_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

FEAT_DIM, NUM_CLASSES = 8, 5


def make_cfg(**heads):
    cfg = backbone_cfg(FEAT_DIM=FEAT_DIM)
    cfg.MODEL.HEADS.update(NUM_CLASSES=NUM_CLASSES, **heads)
    return cfg


def feature_map(batch=4, h=3, w=2, seed=0):
    return torch.randn(batch, FEAT_DIM, h, w, generator=torch.Generator().manual_seed(seed))


TARGETS = torch.tensor([0, 3, 3, 1])


def test_eval_returns_bn_feature_of_the_pooled_map():
    head = build_heads(make_cfg()).eval()
    x = feature_map()
    bn = head.bottleneck[0]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    pooled = x.mean(dim=(2, 3))
    expected = (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
    assert torch.allclose(head(x), expected, atol=1e-5)


def test_state_dict_layout_without_and_with_embedding():
    keys = set(build_heads(make_cfg()).state_dict())
    expected = {"weight", "bottleneck.0.weight", "bottleneck.0.bias", "bottleneck.0.running_var"}
    assert expected <= keys
    head = build_heads(make_cfg(EMBEDDING_DIM=6))
    assert head.bottleneck[0].weight.shape == (6, FEAT_DIM, 1, 1)
    assert head.bottleneck[0].bias is None
    assert head.bottleneck[1].weight.shape == (6,)
    assert head.weight.shape == (NUM_CLASSES, 6)
    assert head.eval()(feature_map()).shape == (4, 6)


def test_without_bnneck_the_neck_is_the_pooled_feature():
    head = build_heads(make_cfg(WITH_BNNECK=False)).eval()
    x = feature_map()
    assert len(head.bottleneck) == 0
    assert torch.allclose(head(x), x.mean(dim=(2, 3)))


def test_bnneck_bias_is_frozen_at_zero_while_weight_trains():
    head = build_heads(make_cfg()).train()
    bn = head.bottleneck[0]
    assert not bn.bias.requires_grad and torch.all(bn.bias == 0)
    weight_before = bn.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    out = head(feature_map(), TARGETS)
    torch.nn.functional.cross_entropy(out["cls_outputs"], TARGETS).backward()
    optimizer.step()
    assert torch.all(bn.bias == 0)
    assert not torch.equal(bn.weight, weight_before)


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_training_features_before_or_after_bnneck(neck_feat):
    head = build_heads(make_cfg(NECK_FEAT=neck_feat)).train()
    x = feature_map()
    out = head(x, TARGETS)
    pooled = x.mean(dim=(2, 3))
    # training BN: batch statistics, biased variance
    normalised = (pooled - pooled.mean(0)) / torch.sqrt(pooled.var(0, unbiased=False) + 1e-5)
    expected = pooled if neck_feat == "before" else normalised
    assert torch.allclose(out["features"], expected, atol=1e-4)


def test_linear_logits_are_plain_dot_products():
    head = build_heads(make_cfg(CLS_LAYER="Linear", SCALE=64)).train()
    x = feature_map()
    out = head(x, TARGETS)
    pooled = x.mean(dim=(2, 3))
    neck = (pooled - pooled.mean(0)) / torch.sqrt(pooled.var(0, unbiased=False) + 1e-5)
    expected = neck @ head.weight.detach().t()
    assert torch.allclose(out["cls_outputs"], expected, atol=1e-4)
    assert torch.allclose(out["pred_class_logits"], expected, atol=1e-4)


def cosines(head, x):
    """Cosine between each neck feature and each class weight, by explicit loops."""
    pooled = x.mean(dim=(2, 3))
    neck = (pooled - pooled.mean(0)) / torch.sqrt(pooled.var(0, unbiased=False) + 1e-5)
    w = head.weight.detach()
    return [[float(neck[i] @ w[c] / (neck[i].norm() * w[c].norm())) for c in range(len(w))]
            for i in range(len(neck))]


def cos_margin(cos, m):
    return cos - m


def arc_margin(cos, m):
    return math.cos(math.acos(cos) + m) if math.acos(cos) + m <= math.pi else cos - m * math.sin(m)


def circle_margin(cos, m, positive):
    if positive:
        return max(1 + m - cos, 0) * (cos - (1 - m))
    return max(cos + m, 0) * (cos - m)


@pytest.mark.parametrize("layer, true_logit, other_logit", [
    ("cosSoftmax", cos_margin, lambda c, m: c),
    ("CosSoftmax", cos_margin, lambda c, m: c),
    ("arcSoftmax", arc_margin, lambda c, m: c),
    ("circleSoftmax", lambda c, m: circle_margin(c, m, True),
     lambda c, m: circle_margin(c, m, False)),
])
def test_margin_layers_against_hand_formulas(layer, true_logit, other_logit):
    scale, margin = 16.0, 0.3
    head = build_heads(make_cfg(CLS_LAYER=layer, SCALE=scale, MARGIN=margin)).train()
    x = feature_map()
    out = head(x, TARGETS)
    cos = cosines(head, x)
    for i, target in enumerate(TARGETS.tolist()):
        for c in range(NUM_CLASSES):
            f = true_logit if c == target else other_logit
            assert out["cls_outputs"][i, c].item() == pytest.approx(scale * f(cos[i][c], margin),
                                                                    abs=1e-4)
            assert out["pred_class_logits"][i, c].item() == pytest.approx(scale * cos[i][c],
                                                                          abs=1e-4)


def test_arc_margin_fallback_past_pi_minus_m():
    from reid.modeling.layers.classification import ArcSoftmax
    layer = ArcSoftmax(scale=1.0, margin=0.5)
    cos = torch.tensor([[-0.99, 0.2]])  # theta ~ 3.0 > pi - 0.5 on the true class
    out = layer(cos, torch.tensor([0]))
    assert out[0, 0].item() == pytest.approx(-0.99 - 0.5 * math.sin(0.5), abs=1e-6)
    assert out[0, 1].item() == pytest.approx(0.2)


@pytest.mark.parametrize("name, reference", [
    ("avgpool", lambda x: x.mean(dim=(2, 3))),
    ("GlobalAvgPool", lambda x: x.mean(dim=(2, 3))),
    ("maxpool", lambda x: x.amax(dim=(2, 3))),
    ("GlobalMaxPool", lambda x: x.amax(dim=(2, 3))),
    ("avgmaxpool", lambda x: x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))),
    ("gempool", lambda x: x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)),
    ("GeneralizedMeanPoolingP", lambda x: x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)),
    ("flatten", lambda x: x.reshape(len(x), -1)),
])
def test_pooling_layers(name, reference):
    x = feature_map()
    out = POOLING_REGISTRY.get(name)()(x)
    assert out.shape[2:] == (1, 1)
    assert torch.allclose(out.flatten(1), reference(x), atol=1e-5)


def test_learnt_gem_p_is_a_parameter_in_the_state_dict():
    head = build_heads(make_cfg(POOL_LAYER="gempoolP"))
    assert head.state_dict()["pool_layer.p"].tolist() == [3.0]
    assert any(p is head.pool_layer.p for p in head.parameters())


def test_num_classes_zero_is_an_error():
    cfg = make_cfg()
    cfg.MODEL.HEADS.NUM_CLASSES = 0
    with pytest.raises(ReidError, match=r"set MODEL.HEADS.NUM_CLASSES or let the train stage "
                                        r"take it from the dataset"):
        build_heads(cfg)


def test_unknown_layer_names_suggest_the_closest():
    with pytest.raises(ReidError, match=r"unknown pooling layer 'gempol'; did you mean 'gempool"):
        build_heads(make_cfg(POOL_LAYER="gempol"))
    with pytest.raises(ReidError, match=r"unknown classification layer 'arcsoftmax'; did you mean"):
        build_heads(make_cfg(CLS_LAYER="arcsoftmax"))


def test_training_without_targets_is_an_error():
    head = build_heads(make_cfg()).train()
    with pytest.raises(ReidError, match=r"the head needs targets in training mode"):
        head(feature_map())


# ---------------------------------------------------------------------------- ClasHead
@pytest.mark.parametrize("cls_layer, scale", [("Linear", 1), ("CircleSoftmax", 16)])
def test_clas_head_evaluates_to_class_logits(cls_layer, scale):
    head = build_heads(make_cfg(NAME="ClasHead", CLS_LAYER=cls_layer, SCALE=scale)).eval()
    x = feature_map()
    # fresh BN statistics: mean 0, variance 1, weight 1, bias 0
    neck = x.mean(dim=(2, 3)) / math.sqrt(1 + 1e-5)
    weight = head.weight.detach()
    if cls_layer == "Linear":
        expected = neck @ weight.t()
    else:
        expected = scale * torch.tensor([[float(n @ w / (n.norm() * w.norm())) for w in weight]
                                         for n in neck])
    with torch.no_grad():
        logits = head(x)
    assert logits.shape == (4, NUM_CLASSES)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_clas_head_trains_like_the_embedding_head_with_the_neck_feature():
    cfg = make_cfg(NAME="ClasHead", CLS_LAYER="CircleSoftmax", SCALE=16, MARGIN=0.25,
                   NECK_FEAT="before")
    clas = build_heads(cfg).train()
    embedding = build_heads(make_cfg(CLS_LAYER="CircleSoftmax", SCALE=16, MARGIN=0.25,
                                     NECK_FEAT="before")).train()
    assert set(clas.state_dict()) == set(embedding.state_dict())  # checkpoints load either way
    embedding.load_state_dict(clas.state_dict())
    x = feature_map()
    out, reference = clas(x, TARGETS), embedding(x, TARGETS)
    assert torch.allclose(out["cls_outputs"], reference["cls_outputs"])
    assert torch.allclose(out["pred_class_logits"], reference["pred_class_logits"])
    _, neck = embedding.neck(x)
    assert torch.allclose(out["features"], neck)  # the neck, although NECK_FEAT is "before"
    with pytest.raises(ReidError, match="needs targets in training mode"):
        clas(x)
