"""Every backbone x the embedding head x each classifier layer trains one step on the CPU.

Each backbone is built once (its smallest depth, 64 x 32 input); for each classifier layer a
fresh EmbeddingHead goes on top, the training losses (cross-entropy + triplet) run forward and
backward, and every trainable parameter of backbone and head must receive a finite gradient.
"""
import pytest
import torch

from reid.modeling import BACKBONE_REGISTRY, CLS_LAYER_REGISTRY, build_backbone, build_heads
from reid.modeling.losses import build_losses
from toys import backbone_cfg

NUM_CLASSES = 4
# (registry name, DEPTH, FEAT_DIM, extra config): the smallest variant of each family.
BACKBONES = [
    ("build_resnet_backbone", "18x", 512, {}),
    ("build_resnext_backbone", "50x", 2048, {}),
    ("build_resnest_backbone", "50x", 2048, {}),
    ("build_osnet_backbone", "x0_25", 128, {}),
    ("build_mobilenetv2_backbone", "0.35x", 1280, {}),
    ("build_mobilenetv3_backbone", "Small", 1024, {}),
    ("build_shufflenetv2_backbone", "0.5x", 1024, {}),
    ("build_regnet_backbone", "800x", 672, {}),
    ("build_effnet_backbone", "b0", 1280, {}),
    ("build_repvgg_backbone", "A0", 1280, {}),
    ("build_vit_backbone", "small", 768, {"STRIDE_SIZE": [16, 16]}),
    ("timm:resnet18", "", 512, {}),
]
CLS_LAYERS = ["linear", "arcSoftmax", "circleSoftmax", "cosSoftmax"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(name, depth, feat_dim, extra, cls_layer="linear"):
    cfg = backbone_cfg(NAME=name, DEPTH=depth, FEAT_DIM=feat_dim, **extra)
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.INPUT.SIZE_TEST = [64, 32]
    cfg.MODEL.HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.HEADS.CLS_LAYER = cls_layer
    cfg.MODEL.HEADS.SCALE, cfg.MODEL.HEADS.MARGIN = 16, 0.2
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    return cfg


def test_the_matrix_covers_every_registered_backbone_and_classifier():
    # Backbones the library registers (other tests register throw-away ones of their own).
    library = {name for name in BACKBONE_REGISTRY.names()
               if BACKBONE_REGISTRY.get(name).__module__.startswith("reid.")}
    assert {name for name, *_ in BACKBONES if not name.startswith("timm:")} == library
    assert set(CLS_LAYERS) <= set(CLS_LAYER_REGISTRY.names())


@pytest.mark.parametrize("name,depth,feat_dim,extra", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_backbone_with_each_classifier_trains_one_step(name, depth, feat_dim, extra):
    if name.startswith("timm:"):
        pytest.importorskip("timm")  # an optional dependency; the test extra installs it
    torch.manual_seed(0)
    backbone = build_backbone(make_cfg(name, depth, feat_dim, extra)).train()
    targets = torch.arange(NUM_CLASSES).repeat_interleave(2)
    images = torch.randn(len(targets), 3, 64, 32)
    for cls_layer in CLS_LAYERS:
        cfg = make_cfg(name, depth, feat_dim, extra, cls_layer)
        heads = build_heads(cfg).train()
        backbone.zero_grad(set_to_none=True)
        outputs = heads(backbone(images), targets)
        losses = {}
        for loss_fn in build_losses(cfg):
            losses.update(loss_fn(outputs, targets))
        assert set(losses) == {"loss_cls", "loss_triplet"}, cls_layer
        total = sum(losses.values())
        assert torch.isfinite(total), (cls_layer, losses)
        total.backward()
        params = [(n, p) for n, p in [*backbone.named_parameters(), *heads.named_parameters()]
                  if p.requires_grad]
        missing = [n for n, p in params if p.grad is None]
        assert not missing, f"{cls_layer}: no gradient for {missing[:5]}"
        assert all(torch.isfinite(p.grad).all() for _, p in params), cls_layer
    heads.eval()
    backbone.eval()
    with torch.no_grad():
        feats = heads(backbone(images))
    assert feats.shape == (len(targets), feat_dim)
