"""MGN (multi-branch, FastReID names and losses) and MoCo (memory queue and its loss)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.meta_arch.build import build_model
from reid.modeling.meta_arch.mgn import FEATURE_ORDER, MGN
from reid.modeling.meta_arch.moco import MEMORY_GAMMA, MEMORY_MARGIN, Memory, MoCo, memory_dim
from toys import backbone_cfg, identity_batch

NUM_CLASSES = 3
DIM = 512  # ResNet-18
HEAD_NAMES = ["b1", "b2", "b21", "b22", "b3", "b31", "b32", "b33"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(arch: str, **heads):
    cfg = backbone_cfg(DEPTH="18x", FEAT_DIM=DIM)
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.HEADS.update(NUM_CLASSES=NUM_CLASSES, **heads)
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    return cfg


def make_batch(height=96):
    """Two images of each of identities 0, 1, 2."""
    return identity_batch(3, height=height)


def brute_force_hard_triplet(features, targets, margin):
    """Batch-hard triplet loss with explicit loops over anchors."""
    losses = []
    for i in range(len(targets)):
        dists = [(features[i] - features[j]).norm() for j in range(len(targets))]
        hardest_pos = max(d for j, d in enumerate(dists) if targets[j] == targets[i])
        hardest_neg = min(d for j, d in enumerate(dists) if targets[j] != targets[i])
        losses.append(max(hardest_pos - hardest_neg + margin, torch.tensor(0.0)))
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- MGN
@pytest.fixture(scope="module")
def mgn():
    torch.manual_seed(0)
    cfg = make_cfg("MGN")
    cfg.MODEL.BACKBONE.LAST_STRIDE = 2  # so b1 keeps stride 2 and b2/b3 visibly do not
    return build_model(cfg)


def test_mgn_parameter_names_are_fastreid_s(mgn):
    keys = set(mgn.state_dict())
    expected = {"backbone.0.weight", "backbone.1.running_var",      # conv1, bn1
                "backbone.4.0.conv1.weight", "backbone.5.1.bn2.weight",  # layer1, layer2
                "backbone.6.conv1.weight", "backbone.6.downsample.0.weight",  # layer3[0]
                "b1.0.0.conv1.weight",                               # layer3[1]
                "b1.1.0.downsample.1.running_mean", "b2.1.1.bn2.bias", "b3.1.0.conv2.weight"}
    expected |= {f"{name}_head.weight" for name in HEAD_NAMES}
    expected |= {f"{name}_head.bottleneck.0.running_mean" for name in HEAD_NAMES}
    assert expected <= keys
    assert not any(k.startswith(("heads.", "pixel_")) for k in keys)
    assert {name for name, _ in mgn.named_children()} == \
        {"backbone", "b1", "b2", "b3"} | {f"{n}_head" for n in HEAD_NAMES}


def test_mgn_part_branches_start_from_layer4_weights_with_stride_one(mgn):
    assert mgn.b1[1][0].conv1.stride == (2, 2)  # ResNet-18: the stride sits on conv1
    for branch in (mgn.b2, mgn.b3):
        assert branch[1][0].conv1.stride == (1, 1)
        assert branch[1][0].downsample[0].stride == (1, 1)
        # same initial weights, separate tensors
        assert torch.equal(branch[1][0].conv1.weight, mgn.b1[1][0].conv1.weight)
        assert branch[1][0].conv1.weight.data_ptr() != mgn.b1[1][0].conv1.weight.data_ptr()
    with torch.no_grad():
        maps = mgn.eval().branch_maps(mgn.backbone(torch.randn(1, 3, 96, 32)))
    assert maps["b1"].shape == (1, DIM, 3, 1)
    assert maps["b2"].shape == maps["b3"].shape == (1, DIM, 6, 2)
    assert torch.equal(torch.cat([maps["b31"], maps["b32"], maps["b33"]], dim=2), maps["b3"])
    assert maps["b21"].shape[2] == maps["b22"].shape[2] == 3


def test_mgn_training_losses_match_fastreid_weights(mgn):
    mgn.train()
    batch = make_batch()
    torch.manual_seed(1)
    losses = mgn(batch)
    assert list(losses) == [f"loss_cls_{n}" for n in HEAD_NAMES] + \
        [f"loss_triplet_{n}" for n in ("b1", "b2", "b3", "b22", "b33")]
    # recompute two terms from the heads' outputs (training BN uses batch statistics only)
    targets = batch["targets"]
    with torch.no_grad():
        maps = mgn.branch_maps(mgn.backbone(mgn.preprocess_image(batch)))
        outputs = {n: getattr(mgn, f"{n}_head")(maps[n], targets) for n in HEAD_NAMES}
    expected_cls = F.cross_entropy(outputs["b21"]["cls_outputs"], targets) / 8
    assert losses["loss_cls_b21"].item() == pytest.approx(expected_cls.item(), rel=1e-4)
    concatenated = torch.cat([outputs[n]["features"] for n in ("b31", "b32", "b33")], dim=1)
    expected_tri = brute_force_hard_triplet(concatenated, targets.tolist(), 0.3) / 5
    assert losses["loss_triplet_b33"].item() == pytest.approx(expected_tri.item(), rel=1e-4)


def test_mgn_backward_reaches_every_branch(mgn):
    mgn.train().zero_grad()
    sum(mgn(make_batch()).values()).backward()
    for name in ("backbone.0.weight", "b1.0.0.conv1.weight", "b2.1.0.conv1.weight",
                 "b3.1.1.conv2.weight", "b22_head.weight", "b33_head.weight"):
        grad = mgn.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    mgn.zero_grad()


def test_mgn_eval_feature_concatenates_eight_heads_in_fastreid_order(mgn):
    mgn.eval()
    images = make_batch()["images"]
    with torch.no_grad():
        feats = mgn(images)
        maps = mgn.branch_maps(mgn.backbone(mgn.preprocess_image(images)))
        expected = [getattr(mgn, f"{n}_head")(maps[n]) for n in
                    ("b1", "b2", "b3", "b21", "b22", "b31", "b32", "b33")]
    assert feats.shape == (6, 8 * DIM)
    assert list(FEATURE_ORDER) == ["b1", "b2", "b3", "b21", "b22", "b31", "b32", "b33"]
    assert torch.allclose(feats, torch.cat(expected, dim=1))


def test_mgn_loads_its_own_checkpoint_with_pixel_statistics(mgn):
    state = dict(mgn.state_dict())
    state["pixel_mean"] = torch.zeros(1, 3, 1, 1)  # old FastReID checkpoints carry these
    torch.manual_seed(7)
    fresh = build_model(make_cfg("MGN"))
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.b33_head.weight, mgn.b33_head.weight)
    assert fresh.pixel_mean.abs().sum() > 0  # from the config, not the checkpoint


def test_mgn_needs_maps_tall_enough_for_three_stripes(mgn):
    mgn.eval()
    with pytest.raises(ReidError, match="into 3 horizontal stripes but the map is 2 rows high"):
        mgn(torch.rand(1, 3, 32, 32))


def test_mgn_rejects_losses_it_cannot_split():
    cfg = make_cfg("MGN")
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "NoSuchLoss")
    with pytest.raises(ReidError, match="MGN does not support MODEL.LOSSES.NAME NoSuchLoss"):
        MGN(cfg)


def test_mgn_needs_a_resnet_style_backbone(monkeypatch):
    class Plain(nn.Module):
        out_channels = DIM

    monkeypatch.setitem(BACKBONE_REGISTRY._objects, "build_plain_test_backbone",
                        lambda cfg: Plain())
    cfg = make_cfg("MGN")
    cfg.MODEL.BACKBONE.NAME = "build_plain_test_backbone"
    with pytest.raises(ReidError, match="MGN needs a ResNet-style backbone .* "
                                        "build_plain_test_backbone has no conv1"):
        MGN(cfg)


# --------------------------------------------------------------------------- MoCo memory
def test_memory_is_a_fifo_queue_that_wraps_around():
    memory = Memory(dim=2, size=5)
    assert memory.queue_label.tolist() == [[-1] * 5]
    assert torch.allclose(memory.queue.norm(dim=0), torch.ones(5))
    items = torch.arange(12, dtype=torch.float32).view(6, 2)  # item k = (2k, 2k + 1)
    columns = [memory.enqueue(items[i:i + 2], torch.tensor([10 + i, 11 + i])).tolist()
               for i in (0, 2, 4)]
    assert columns == [[0, 1], [2, 3], [4, 0]]
    # item 5 (label 15) overwrote item 0 in column 0; the pointer is back at 1
    assert memory.queue.t().tolist() == [[10, 11], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert memory.queue_label.tolist() == [[15, 11, 12, 13, 14]]
    assert memory.queue_ptr.tolist() == [1]


def test_memory_must_hold_a_whole_batch():
    with pytest.raises(ReidError, match="MODEL.QUEUE_SIZE 3 is smaller than the batch of 4"):
        Memory(dim=2, size=3).enqueue(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def brute_force_memory_loss(queries, targets, queue, labels, own_columns):
    """Per query: softplus(log sum_p exp(-g s) + log sum_n exp(g (s + m))), by loops."""
    total = 0.0
    for i, q in enumerate(queries):
        pos, neg = [], []
        for j in range(queue.shape[1]):
            s = float(q @ queue[:, j])
            if labels[j] == targets[i] and j != own_columns[i]:
                pos.append(math.exp(-MEMORY_GAMMA * s))
            elif labels[j] != targets[i]:
                neg.append(math.exp(MEMORY_GAMMA * (s + MEMORY_MARGIN)))
        if not pos or not neg:
            continue  # masked to a finite -inf: the term vanishes
        total += math.log1p(sum(pos) * sum(neg))  # softplus(log a + log b)
    return total / len(queries)


def test_memory_loss_against_brute_force_after_wrap_around():
    memory = Memory(dim=4, size=5)
    memory.enqueue(torch.eye(4), torch.tensor([0, 1, 5, 0]))
    features = torch.tensor([[1.0, 0.2, 0.0, 0.3],    # identity 0: one older positive (column 3)
                             [0.0, 0.0, 1.0, 0.1],    # identity 2: only itself in the queue,
                             [0.0, 0.1, 1.0, 0.2]],   # and this near-duplicate as a negative
                            requires_grad=True)
    targets = torch.tensor([0, 2, 3])
    loss = memory(features, targets)
    # the batch went into columns 4, 0, 1 (wrapping around)
    assert memory.queue_ptr.tolist() == [2]
    assert memory.queue_label.tolist() == [[2, 3, 5, 0, 0]]
    queries = F.normalize(features.detach(), dim=1)
    assert torch.allclose(memory.queue[:, [4, 0, 1]].t(), queries)
    expected = brute_force_memory_loss(queries, targets.tolist(), memory.queue,
                                       memory.queue_label[0].tolist(), [4, 0, 1])
    assert expected > 0
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


# --------------------------------------------------------------------------- MoCo model
def test_moco_adds_the_memory_loss_and_queues_the_batch():
    torch.manual_seed(4)
    cfg = make_cfg("MoCo")
    cfg.MODEL.QUEUE_SIZE = 8
    model = build_model(cfg).train()
    assert isinstance(model, MoCo)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("memory")}
    assert shapes == {"memory.queue": (DIM, 8), "memory.queue_label": (1, 8),
                      "memory.queue_ptr": (1,)}
    batch = make_batch(height=64)
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_triplet", "loss_mb"}
    assert losses["loss_mb"].item() > 0
    assert model.memory.queue_label.tolist() == [[0, 0, 1, 1, 2, 2, -1, -1]]
    assert model.memory.queue_ptr.tolist() == [6]
    # the queued keys are the normalised metric features
    with torch.no_grad():
        features = model.heads(model.backbone(model.preprocess_image(batch)),
                               batch["targets"])["features"]
    assert torch.allclose(model.memory.queue[:, :6].t(), F.normalize(features, dim=1),
                          atol=1e-5)
    sum(losses.values()).backward()
    # a checkpoint resumes the queue
    resumed = build_model(cfg)
    resumed.load_state_dict(model.state_dict(), strict=True)
    assert resumed.memory.queue_ptr.tolist() == [6]
    assert torch.equal(resumed.memory.queue, model.memory.queue)


def test_moco_eval_returns_baseline_features_without_touching_the_queue():
    torch.manual_seed(5)
    cfg = make_cfg("MoCo")
    cfg.MODEL.QUEUE_SIZE = 8
    model = build_model(cfg).eval()
    queue = model.memory.queue.clone()
    with torch.no_grad():
        assert model(make_batch(height=64)["images"]).shape == (6, DIM)
    assert torch.equal(model.memory.queue, queue) and model.memory.queue_ptr.tolist() == [0]


@pytest.mark.parametrize("embedding, neck_feat, expected", [
    (0, "before", DIM), (0, "after", DIM), (128, "before", DIM), (128, "after", 128)])
def test_memory_dim_is_the_metric_feature_dim(embedding, neck_feat, expected):
    cfg = make_cfg("MoCo", EMBEDDING_DIM=embedding, NECK_FEAT=neck_feat)
    assert memory_dim(cfg) == expected
