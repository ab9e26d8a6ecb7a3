"""Losses against brute-force references written with explicit Python loops and math."""
import math

import pytest
import torch

from reid.config import get_cfg
from reid.errors import ReidError
from reid.modeling import build_losses
from reid.modeling.losses import (cross_entropy_loss, distillation_loss, focal_loss,
                                  pairwise_circle_loss, pairwise_cosface_loss, triplet_loss)

pytestmark = pytest.mark.usefixtures("one_thread")


def log_softmax_row(row):
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def softplus(x):
    return math.log1p(math.exp(x))


def logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


# --- cross-entropy --------------------------------------------------------------------------

LOGITS_2X3 = [[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]]
TARGETS_2 = [2, 0]


def test_cross_entropy_with_label_smoothing_by_hand():
    # smoothed labels: 1 - 0.1 = 0.9 on the true class, 0.1 / 2 = 0.05 on each other class
    labels = [[0.05, 0.05, 0.9], [0.9, 0.05, 0.05]]
    per_row = [-sum(l * lp for l, lp in zip(lab, log_softmax_row(row)))
               for lab, row in zip(labels, LOGITS_2X3)]
    expected = sum(per_row) / 2
    got = cross_entropy_loss(torch.tensor(LOGITS_2X3), torch.tensor(TARGETS_2), epsilon=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # worked out on paper: both rows have log-probs (-2.4076, -1.4076, -0.4076) in label order
    # (wrong, wrong, right), so each row costs 0.05 * 2.4076 + 0.05 * 1.4076 + 0.9 * 0.4076
    assert got.item() == pytest.approx(0.5576, abs=1e-4)


def test_cross_entropy_without_smoothing_is_plain_nll():
    expected = -(log_softmax_row(LOGITS_2X3[0])[2] + log_softmax_row(LOGITS_2X3[1])[0]) / 2
    got = cross_entropy_loss(torch.tensor(LOGITS_2X3), torch.tensor(TARGETS_2), epsilon=0.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_label_smoothing_uses_alpha_times_true_class_probability():
    alpha, total = 0.2, 0.0
    for row, target in zip(LOGITS_2X3, TARGETS_2):
        log_p = log_softmax_row(row)
        eps = alpha * math.exp(log_p[target])
        total += -sum(((1 - eps) if c == target else eps / 2) * log_p[c] for c in range(3))
    got = cross_entropy_loss(torch.tensor(LOGITS_2X3), torch.tensor(TARGETS_2), epsilon=-1,
                             alpha=alpha)
    assert got.item() == pytest.approx(total / 2, rel=1e-6)


# --- focal -----------------------------------------------------------------------------------

def test_focal_loss_by_hand():
    alpha, gamma, total = 0.25, 2.0, 0.0
    for row, target in zip(LOGITS_2X3, TARGETS_2):
        p = math.exp(log_softmax_row(row)[target])
        total += -alpha * (1 - p) ** gamma * math.log(p)
    got = focal_loss(torch.tensor(LOGITS_2X3), torch.tensor(TARGETS_2), alpha, gamma)
    assert got.item() == pytest.approx(total / 2, rel=1e-6)


# --- triplet ---------------------------------------------------------------------------------

def embedding_batch(seed=0, n_ids=3, per_id=3, dim=5):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_ids * per_id, dim, generator=g)
    targets = torch.arange(n_ids).repeat_interleave(per_id)
    return emb, targets


def distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def cosine_distance(a, b):
    """2 - 2 cos: FastReID 1.4's distance for TRI.NORM_FEAT True."""
    dot = sum(x * y for x, y in zip(a, b))
    return 2 - 2 * dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def triplet_reference(emb, targets, margin, hard_mining, normalise=False):
    rows = emb.tolist()
    dist = cosine_distance if normalise else distance
    ids = targets.tolist()
    losses = []
    for i, anchor in enumerate(rows):
        pos = [dist(anchor, rows[j]) for j in range(len(rows)) if ids[j] == ids[i]]
        neg = [dist(anchor, rows[j]) for j in range(len(rows)) if ids[j] != ids[i]]
        if hard_mining:
            d_ap, d_an = max(pos), min(neg)
        else:
            w_p = [math.exp(d) for d in pos]
            w_n = [math.exp(-d) for d in neg]
            d_ap = sum(w * d for w, d in zip(w_p, pos)) / sum(w_p)
            d_an = sum(w * d for w, d in zip(w_n, neg)) / sum(w_n)
        losses.append(max(0.0, d_ap - d_an + margin) if margin > 0 else softplus(d_ap - d_an))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("margin", [0.3, 5.0, 0.0])
@pytest.mark.parametrize("hard_mining", [True, False])
@pytest.mark.parametrize("norm_feat", [False, True])
def test_triplet_loss_against_loops_over_anchors(margin, hard_mining, norm_feat):
    emb, targets = embedding_batch()
    got = triplet_loss(emb, targets, margin, norm_feat=norm_feat, hard_mining=hard_mining)
    expected = triplet_reference(emb, targets, margin, hard_mining, normalise=norm_feat)
    assert expected > 0
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_normalised_triplet_uses_two_minus_two_cos_as_fastreid():
    # Same direction within an identity (d_ap = 0), orthogonal across (cos 0): FastReID 1.4's
    # cosine distance is 2 - 2 * 0 = 2, so the loss is 3 - 2 = 1 (the euclidean distance of
    # the unit vectors, sqrt(2), would give 1.586).
    emb = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 0.5]])
    targets = torch.tensor([0, 0, 1, 1])
    loss = triplet_loss(emb, targets, 3.0, norm_feat=True, hard_mining=True)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def test_triplet_loss_with_one_identity_is_zero_with_finite_gradient():
    emb = torch.randn(4, 5, requires_grad=True)
    loss = triplet_loss(emb, torch.zeros(4, dtype=torch.long), 0.3, False, True)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()


def test_triplet_gradient_is_finite_with_duplicate_samples():
    emb, targets = embedding_batch()
    emb = torch.cat([emb, emb[:1]]).requires_grad_(True)  # a zero distance off the diagonal
    triplet_loss(emb, torch.cat([targets, targets[:1]]), 0.3, False, True).backward()
    assert torch.isfinite(emb.grad).all()


# --- pairwise circle / cosface ---------------------------------------------------------------

def cosine(a, b):
    norms = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norms


def pairwise_reference(emb, targets, positive_logit, negative_logit):
    rows, ids = emb.tolist(), targets.tolist()
    total = 0.0
    for i, anchor in enumerate(rows):
        pos = [positive_logit(cosine(anchor, rows[j])) for j in range(len(rows))
               if ids[j] == ids[i] and j != i]
        neg = [negative_logit(cosine(anchor, rows[j])) for j in range(len(rows))
               if ids[j] != ids[i]]
        total += softplus(logsumexp(pos) + logsumexp(neg))
    return total / len(rows)


def test_pairwise_circle_loss_against_loops():
    m, gamma = 0.25, 8.0
    emb, targets = embedding_batch(seed=1)
    expected = pairwise_reference(
        emb, targets,
        lambda s: -gamma * max(1 + m - s, 0) * (s - (1 - m)),
        lambda s: gamma * max(s + m, 0) * (s - m))
    got = pairwise_circle_loss(emb, targets, m, gamma)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_cosface_loss_against_loops():
    m, gamma = 0.25, 8.0
    emb, targets = embedding_batch(seed=2)
    expected = pairwise_reference(emb, targets, lambda s: -gamma * s, lambda s: gamma * (s + m))
    got = pairwise_cosface_loss(emb, targets, m, gamma)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_loss_gradient_is_finite_when_an_identity_has_one_sample():
    emb = torch.randn(4, 5, requires_grad=True)
    pairwise_circle_loss(emb, torch.tensor([0, 0, 1, 2]), 0.25, 128).backward()
    assert torch.isfinite(emb.grad).all()


# --- distillation ------------------------------------------------------------------------------

STUDENT = [[1.0, 0.5, -0.5], [0.0, 2.0, 1.0]]
TEACHER = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]


def softmax_row(row, t):
    return [math.exp(v) for v in log_softmax_row([x / t for x in row])]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kl_distillation_by_hand():
    t = 2.0
    per_row = [kl(softmax_row(tr, t), softmax_row(sr, t)) for sr, tr in zip(STUDENT, TEACHER)]
    got = distillation_loss("kl", torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert got.item() == pytest.approx(sum(per_row) / 2 * t * t, rel=1e-6)


def test_js_distillation_by_hand():
    t = 3.0
    total = 0.0
    for sr, tr in zip(STUDENT, TEACHER):
        p, q = softmax_row(tr, t), softmax_row(sr, t)
        m = [(a + b) / 2 for a, b in zip(p, q)]
        total += 0.5 * kl(p, m) + 0.5 * kl(q, m)
    got = distillation_loss("js", torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert got.item() == pytest.approx(total / 2 * t * t, rel=1e-6)


def test_distillation_gradient_reaches_only_the_student():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    distillation_loss("kl", student, teacher, 4.0).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


# --- registry and config ---------------------------------------------------------------------

@pytest.mark.parametrize("name, key, section, function", [
    ("CrossEntropyLoss", "loss_cls", "CE",
     lambda o, t: cross_entropy_loss(o["cls_outputs"], t, 0.1)),
    ("FocalLoss", "loss_focal", "FL",
     lambda o, t: focal_loss(o["cls_outputs"], t, 0.25, 2)),
    ("TripletLoss", "loss_triplet", "TRI",
     lambda o, t: triplet_loss(o["features"], t, 0.3, False, True)),
    ("CircleLoss", "loss_circle", "CIRCLE",
     lambda o, t: pairwise_circle_loss(o["features"], t, 0.25, 128)),
    ("Cosface", "loss_cosface", "COSFACE",
     lambda o, t: pairwise_cosface_loss(o["features"], t, 0.25, 128)),
])
def test_losses_built_from_the_config_apply_their_scale(name, key, section, function):
    cfg = get_cfg()
    cfg.MODEL.LOSSES.NAME = (name,)
    cfg.MODEL.LOSSES.CE.EPSILON = 0.1
    cfg.MODEL.LOSSES[section].SCALE = 0.5
    (loss_fn,) = build_losses(cfg)
    emb, targets = embedding_batch(seed=3, dim=3)
    outputs = {"cls_outputs": emb * 2, "pred_class_logits": emb, "features": emb}
    result = loss_fn(outputs, targets)
    assert list(result) == [key]
    assert result[key].item() == pytest.approx(0.5 * function(outputs, targets).item(), rel=1e-6)


def test_unknown_loss_name_suggests_the_closest():
    cfg = get_cfg()
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLos")
    with pytest.raises(ReidError, match=r"unknown loss 'TripletLos'; did you mean 'TripletLoss'"):
        build_losses(cfg)


def test_duplicate_loss_names_are_an_error():
    cfg = get_cfg()
    cfg.MODEL.LOSSES.NAME = ("TripletLoss", "TripletLoss")
    with pytest.raises(ReidError, match=r"MODEL.LOSSES.NAME lists TripletLoss more than once"):
        build_losses(cfg)
