"""Distiller: frozen eval-mode teacher outside the student's state, the KD loss by hand, several
teachers; overhaul feature distillation and EMA self-distillation checked against brute-force
references written here; the KD path-list override used by the distill flow."""
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from oracles import hand_js, hand_kl
from reid.config import load_config, merge_overrides
from reid.engine.checkpoint import Checkpointer
from reid.errors import ReidError
from reid.modeling import Baseline, build_model
from reid.modeling.losses.distillation import bn_margins, overhaul_distillation
from reid.modeling.meta_arch.overhaul import build_connector, last_block
from reid.modeling.meta_arch.teachers import paths_override, teacher_paths
from toys import backbone_cfg, identity_batch

NUM_CLASSES = 4
TEACHER_YAML = {"MODEL": {"BACKBONE": {"DEPTH": "18x", "FEAT_DIM": 512, "PRETRAIN": False},
                          "HEADS": {"NUM_CLASSES": 0}}}

pytestmark = pytest.mark.usefixtures("one_thread")


def save_teacher(tmp_path, num_classes=NUM_CLASSES, seed=7, name="teacher"):
    """A teacher config file and a checkpoint {"model": state_dict} with non-trivial BN stats."""
    config = tmp_path / f"{name}.yml"
    config.write_text(yaml.safe_dump(TEACHER_YAML))
    cfg = load_config(config, ["MODEL.HEADS.NUM_CLASSES", str(num_classes)])
    torch.manual_seed(seed)
    teacher = Baseline(cfg)
    with torch.no_grad():
        for bn in (m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    weights = tmp_path / f"{name}.pth"
    torch.save({"model": teacher.state_dict(), "iteration": 10}, weights)
    return config, weights, teacher.eval()


def student_cfg(config, weights, loss="kl"):
    cfg = backbone_cfg(DEPTH="18x", FEAT_DIM=512)
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.MODEL.HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.KD.MODEL_CONFIG = str(config)
    cfg.KD.MODEL_WEIGHTS = str(weights)
    cfg.KD.LOSS = loss
    cfg.KD.TEMPERATURE = 2.0
    cfg.KD.SCALE = 0.5
    return cfg


def make_batch():
    return identity_batch(NUM_CLASSES)


@pytest.fixture
def setup(tmp_path):
    config, weights, reference_teacher = save_teacher(tmp_path)
    cfg = student_cfg(config, weights)
    torch.manual_seed(0)
    return build_model(cfg), reference_teacher, cfg


def test_teacher_is_frozen_and_not_part_of_the_student(setup):
    model, reference_teacher, cfg = setup
    teacher = model.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    student_ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in student_ids for p in teacher.parameters())
    plain = cfg.clone()
    plain.MODEL.META_ARCHITECTURE = "Baseline"
    assert list(model.state_dict()) == list(Baseline(plain).state_dict())
    for key, value in reference_teacher.state_dict().items():
        assert torch.equal(teacher.state_dict()[key], value), key


def test_teacher_stays_in_eval_mode_after_train(setup):
    model = setup[0]
    model.train()
    assert model.training and model.backbone.training
    assert not any(m.training for m in model.teacher.modules())
    model.teacher.train()  # even if something switches it, a training forward puts it back
    model(make_batch())
    assert not any(m.training for m in model.teacher.modules())


def test_moving_the_student_moves_the_teacher(setup):
    model = setup[0].double()
    assert model.teacher.heads.weight.dtype == torch.float64
    assert model.teacher.pixel_mean.dtype == torch.float64


@pytest.mark.parametrize("loss, reference", [("kl", hand_kl), ("js", hand_js)])
def test_training_adds_kd_loss_on_teacher_and_student_logits(tmp_path, loss, reference):
    config, weights, reference_teacher = save_teacher(tmp_path)
    model = build_model(student_cfg(config, weights, loss)).train()
    batch = make_batch()
    teacher_stats = model.teacher.backbone.bn1.running_mean.clone()
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_kd"}

    # independent logits: the reference teacher's eval feature times its classifier (linear
    # head), and the student's head in training mode on the same batch
    with torch.no_grad():
        teacher_logits = reference_teacher(batch["images"]) @ reference_teacher.heads.weight.t()
        images = model.preprocess_image(batch)
        student_logits = model.heads(model.backbone(images), batch["targets"])["pred_class_logits"]
    expected = 0.5 * reference(student_logits, teacher_logits, 2.0)
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-4)
    assert torch.equal(model.teacher.backbone.bn1.running_mean, teacher_stats)

    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.heads.weight.grad is not None


def test_student_checkpoint_loads_into_a_plain_baseline(setup):
    model, _, cfg = setup
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "Baseline"
    plain = Baseline(plain_cfg)
    plain.load_state_dict(model.state_dict())  # strict: no teacher keys, nothing missing
    model.eval(), plain.eval()
    images = make_batch()["images"]
    with torch.no_grad():
        assert torch.equal(model(images), plain(images))


def test_missing_teacher_config_names_the_key(tmp_path):
    _, weights, _ = save_teacher(tmp_path)
    with pytest.raises(ReidError, match=r"KD.MODEL_CONFIG is empty; set it to the teacher's"):
        build_model(student_cfg("", weights))
    with pytest.raises(ReidError, match=r"KD.MODEL_CONFIG .*nope.yml does not exist"):
        build_model(student_cfg(tmp_path / "nope.yml", weights))


def test_missing_teacher_weights_is_an_error(tmp_path):
    config, _, _ = save_teacher(tmp_path)
    with pytest.raises(ReidError, match=r"KD.MODEL_WEIGHTS .*missing.pth does not exist"):
        build_model(student_cfg(config, tmp_path / "missing.pth"))


def test_weights_without_model_key_are_an_error(tmp_path):
    config, weights, _ = save_teacher(tmp_path)
    torch.save({"state": 1}, weights)
    with pytest.raises(ReidError, match=r"is not a checkpoint dict with key 'model'"):
        build_model(student_cfg(config, weights))


def test_teacher_trained_on_another_set_is_an_error(tmp_path):
    config, weights, _ = save_teacher(tmp_path, num_classes=7)
    with pytest.raises(ReidError, match=r"classify 7 identities \(heads.weight \[7, 512\]\) but "
                                        r"the student's training set has 4"):
        build_model(student_cfg(config, weights))


# --- several teachers (FastReID 1.4: KD.MODEL_CONFIG / KD.MODEL_WEIGHTS as lists) ------------
def save_teachers(tmp_path, seeds=(7, 8)):
    return [save_teacher(tmp_path, seed=seed, name=f"teacher{seed}") for seed in seeds]


def several_teachers_cfg(tmp_path, teachers):
    """A student recipe file listing every teacher, read the way a user's file is."""
    recipe = tmp_path / "student.yml"
    recipe.write_text(yaml.safe_dump({
        "MODEL": {"META_ARCHITECTURE": "Distiller",
                  "BACKBONE": {"DEPTH": "18x", "FEAT_DIM": 512, "PRETRAIN": False},
                  "HEADS": {"NUM_CLASSES": NUM_CLASSES}},
        "KD": {"MODEL_CONFIG": [str(config) for config, _, _ in teachers],
               "MODEL_WEIGHTS": [str(weights) for _, weights, _ in teachers],
               "LOSS": "kl", "TEMPERATURE": 2.0, "SCALE": 0.5}}))
    return load_config(recipe)


def test_several_teachers_kd_loss_is_the_mean_of_each_teachers_loss(tmp_path):
    teachers = save_teachers(tmp_path)
    model = build_model(several_teachers_cfg(tmp_path, teachers)).train()
    assert len(model.teachers) == 2
    batch = make_batch()
    losses = model(batch)

    with torch.no_grad():
        images = model.preprocess_image(batch)
        student = model.heads(model.backbone(images), batch["targets"])["pred_class_logits"]
        per_teacher = [hand_kl(student, ref(batch["images"]) @ ref.heads.weight.t(), 2.0)
                       for _, _, ref in teachers]
    assert per_teacher[0] != pytest.approx(per_teacher[1], rel=1e-2)  # the teachers differ
    assert losses["loss_kd"].item() == pytest.approx(0.5 * sum(per_teacher) / 2, rel=1e-4)


def test_several_teachers_are_frozen_unsaved_and_stay_in_eval_mode(tmp_path):
    teachers = save_teachers(tmp_path)
    cfg = several_teachers_cfg(tmp_path, teachers)
    model = build_model(cfg)
    plain = cfg.clone()
    plain.MODEL.META_ARCHITECTURE = "Baseline"
    assert list(model.state_dict()) == list(Baseline(plain).state_dict())
    student_ids = {id(p) for p in model.parameters()}
    for teacher, (_, _, reference) in zip(model.teachers, teachers):  # in the listed order
        assert not any(id(p) in student_ids or p.requires_grad for p in teacher.parameters())
        for key, value in reference.state_dict().items():
            assert torch.equal(teacher.state_dict()[key], value), key

    model.train()
    sum(model(make_batch()).values()).backward()
    for teacher in model.teachers:
        assert not any(m.training for m in teacher.modules())
        assert all(p.grad is None for p in teacher.parameters())
    model.double()
    assert all(t.heads.weight.dtype == torch.float64 for t in model.teachers)


def test_mismatched_teacher_lists_name_both_lengths(tmp_path):
    (c1, w1, _), (c2, _, _) = save_teachers(tmp_path)
    cfg = student_cfg(c1, w1)
    cfg.KD.MODEL_CONFIG = [str(c1), str(c2)]
    cfg.KD.MODEL_WEIGHTS = [str(w1)]
    with pytest.raises(ReidError, match=r"^KD.MODEL_CONFIG names 2 teacher\(s\) but "
                                        r"KD.MODEL_WEIGHTS 1 checkpoint\(s\); give one "
                                        r"checkpoint per teacher config, in the same order$"):
        build_model(cfg)
    cfg.KD.MODEL_CONFIG = str(c1)  # one config as a string, two checkpoints
    cfg.KD.MODEL_WEIGHTS = [str(w1), str(w1)]
    with pytest.raises(ReidError, match=r"names 1 teacher\(s\) but KD.MODEL_WEIGHTS 2 "):
        build_model(cfg)
    cfg.KD.MODEL_WEIGHTS = [""]
    with pytest.raises(ReidError, match=r"^KD.MODEL_WEIGHTS entry 1 of 1 is empty"):
        build_model(cfg)


# --- overhaul and EMA: teachers of other depths --------------------------------------------------
FEAT_DIM = {"18x": 512, "50x": 2048}


def model_cfg(depth="18x", last_stride=1):
    cfg = backbone_cfg(DEPTH=depth, FEAT_DIM=FEAT_DIM[depth], LAST_STRIDE=last_stride)
    cfg.MODEL.HEADS.NUM_CLASSES = NUM_CLASSES
    return cfg


def save_varied_teacher(folder, depth, seed, last_stride=1):
    """Config + checkpoint of a teacher whose BN statistics and affine terms vary by channel."""
    config = folder / f"teacher{depth}s{last_stride}.yml"
    config.write_text(yaml.safe_dump({"MODEL": {"BACKBONE": {
        "DEPTH": depth, "FEAT_DIM": FEAT_DIM[depth], "LAST_STRIDE": last_stride,
        "PRETRAIN": False}}}))
    torch.manual_seed(seed)
    teacher = Baseline(model_cfg(depth, last_stride))
    with torch.no_grad():
        for bn in (m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1.0, 1.0)
        last = teacher.backbone.layer4[-1]
        getattr(last, "bn3", getattr(last, "bn2", None)).bias[:3] = 5.0  # -3 std margins
    weights = folder / f"teacher{depth}seed{seed}.pth"
    torch.save({"model": teacher.state_dict()}, weights)
    return config, weights, teacher.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="module")
def r50_teacher(folder):
    return save_varied_teacher(folder, "50x", seed=3)


def distiller_cfg(configs="", weights="", **kd):
    cfg = model_cfg()
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.KD.MODEL_CONFIG = configs
    cfg.KD.MODEL_WEIGHTS = weights
    cfg.KD.TEMPERATURE = 2.0
    cfg.KD.SCALE = 0.5
    for key, value in kd.items():
        node, _, leaf = key.rpartition("__")
        (cfg.KD[node] if node else cfg.KD)[leaf] = value
    return cfg


# --- overhaul: margins and partial L2 by brute force --------------------------------------------
def brute_margin(gamma, beta):
    """E[x | x < 0] for x ~ N(beta, |gamma|^2), or -3 |gamma| when P(x < 0) <= 0.001."""
    s, m = abs(gamma), beta
    p_negative = 0.5 * math.erfc((m / s) / math.sqrt(2.0))
    if p_negative > 0.001:
        return m - s * math.exp(-0.5 * (m / s) ** 2) / math.sqrt(2.0 * math.pi) / p_negative
    return -3.0 * s


def brute_overhaul(student, teacher, margins):
    total = 0.0
    b, c, h, w = student.shape
    for i in range(b):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    s = student[i, k, y, x].item()
                    target = max(teacher[i, k, y, x].item(), margins[k].item())
                    if s > target or target > 0:
                        total += (s - target) ** 2
    return total / b / 10000.0


def test_bn_margins_by_hand_and_by_brute_force():
    # N(0, 1): E[x | x < 0] = -pdf(0) / 0.5 = -2 / sqrt(2 pi); |gamma| is the std
    got = bn_margins(torch.tensor([1.0, -2.0, 0.1]), torch.tensor([0.0, 0.0, 1.0]))
    assert got.tolist() == pytest.approx([-0.7978845608, -1.5957691216, -0.3], rel=1e-6)
    g = torch.Generator().manual_seed(1)
    gamma, beta = torch.rand(40, generator=g) + 0.2, torch.randn(40, generator=g) * 2
    got = bn_margins(gamma, beta)
    expected = [brute_margin(a, b) for a, b in zip(gamma.tolist(), beta.tolist())]
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert (got < 0).all()


def test_overhaul_loss_by_hand():
    teacher = torch.tensor([[[[-1.0, 0.5]], [[-0.2, -3.0]]]])
    student = torch.tensor([[[[-2.0, 1.5]], [[0.3, -0.5]]]])
    margins = torch.tensor([-0.5, -1.0])
    # targets -0.5, 0.5 | -0.2, -1.0: the first position is skipped (student below a
    # non-positive target); (1.5 - 0.5)^2 + (0.3 + 0.2)^2 + (-0.5 + 1.0)^2 = 1.5
    assert overhaul_distillation(student, teacher, margins).item() == pytest.approx(1.5e-4)


def test_overhaul_loss_matches_brute_force_and_trains_only_the_student():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 3, 2, 2, generator=g, requires_grad=True)
    teacher = torch.randn(2, 3, 2, 2, generator=g, requires_grad=True)
    margins = torch.tensor([-0.3, -1.2, 0.0])
    loss = overhaul_distillation(student, teacher, margins)
    assert loss.item() == pytest.approx(brute_overhaul(student, teacher, margins), rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_connector_maps_student_channels_to_teacher_channels():
    connector = build_connector(512, 2048)
    conv, bn = connector
    assert conv.weight.shape == (2048, 512, 1, 1) and conv.bias is None
    assert bn.num_features == 2048
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / 2048), rel=0.05)
    assert connector(torch.randn(2, 512, 4, 2)).shape == (2, 2048, 4, 2)
    same = build_connector(512, 512)
    assert isinstance(same, nn.Identity) and not list(same.parameters())


def pre_relu_map(backbone, images):
    """The last block's response before its final ReLU, computed layer by layer."""
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4[:-1]):
        x = stage(x)
    block = backbone.layer4[-1]
    identity = x if block.downsample is None else block.downsample(x)
    out = F.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "bn3"):
        out = block.bn3(block.conv3(F.relu(block.bn2(block.conv2(out)))))
    else:
        out = block.bn2(block.conv2(out))
    return out + identity


def connect_by_hand(connector, student_map):
    conv, bn = connector
    y = F.conv2d(student_map, conv.weight)
    mean, var = y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)
    y = (y - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    return y * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def test_overhaul_loss_of_a_resnet18_student_and_resnet50_teacher(r50_teacher):
    config, weights, reference = r50_teacher
    model = build_model(distiller_cfg(str(config), str(weights), OVERHAUL_SCALE=2.0)).train()
    conv = model.connectors[0][0]
    assert conv.weight.shape == (2048, 512, 1, 1)
    assert {"connectors.0.0.weight", "connectors.0.1.running_mean"} <= set(model.state_dict())
    assert id(conv.weight) in {id(p) for p in model.parameters()}  # trained with the student
    batch = make_batch()
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_kd", "loss_overhaul"}

    with torch.no_grad():
        images = model.preprocess_image(batch)
        student_map = connect_by_hand(model.connectors[0], pre_relu_map(model.backbone, images))
        teacher_map = pre_relu_map(reference.backbone, reference.preprocess_image(batch))
        bn3 = reference.backbone.layer4[-1].bn3
        margins = torch.tensor([brute_margin(a, b)
                                for a, b in zip(bn3.weight.tolist(), bn3.bias.tolist())])
    assert margins[:3].tolist() == pytest.approx([-3 * abs(w) for w in bn3.weight[:3].tolist()])
    torch.testing.assert_close(model.overhaul_margins()[0], margins, rtol=1e-5, atol=1e-6)
    expected = 2.0 * brute_overhaul(student_map, teacher_map, margins)
    assert losses["loss_overhaul"].item() == pytest.approx(expected, rel=1e-4)

    sum(losses.values()).backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_overhaul_with_same_channels_adds_nothing_to_the_checkpoint(folder, r50_teacher):
    config, weights, _ = save_varied_teacher(folder, "18x", seed=5)
    cfg = distiller_cfg(str(config), str(weights), OVERHAUL_SCALE=1.0)
    model = build_model(cfg).train()
    assert isinstance(model.connectors[0], nn.Identity)
    plain = cfg.clone()
    plain.MODEL.META_ARCHITECTURE = "Baseline"
    assert list(model.state_dict()) == list(Baseline(plain).state_dict())
    assert model(make_batch())["loss_overhaul"].item() > 0

    # the same weights as a teacher with last stride 2: its feature map is half the size
    strided, _, _ = save_varied_teacher(folder, "18x", seed=5, last_stride=2)
    model = build_model(distiller_cfg(str(strided), str(weights), OVERHAUL_SCALE=1.0)).train()
    with pytest.raises(ReidError, match=r"the student's last feature map is \(4, 2\) but "
                                        r"teacher 1's is \(2, 1\); use the same "
                                        r"MODEL.BACKBONE.LAST_STRIDE"):
        model(make_batch())


def test_overhaul_needs_a_configured_resnet_style_teacher():
    cfg = distiller_cfg(OVERHAUL_SCALE=1.0, EMA__ENABLED=True)
    with pytest.raises(ReidError, match=r"^KD.OVERHAUL_SCALE > 0 needs a teacher in "
                                        r"KD.MODEL_CONFIG \(the KD.EMA teacher"):
        build_model(cfg)
    with pytest.raises(ReidError, match=r"needs ResNet-style backbones .* the teacher 1's "
                                        r"Sequential has none; set KD.OVERHAUL_SCALE 0$"):
        last_block(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), "teacher 1")


# --- EMA self-distillation ----------------------------------------------------------------------
def ema_model(momentum=0.9, **kd):
    torch.manual_seed(0)
    return build_model(distiller_cfg(EMA__ENABLED=True, EMA__MOMENTUM=momentum, **kd))


def test_ema_teacher_starts_as_the_student_and_is_not_saved():
    model = ema_model()
    assert model.teachers == (model.ema_teacher,) and model.teacher is model.ema_teacher
    student = model.state_dict()
    plain = Baseline(model_cfg())
    assert list(student) == list(plain.state_dict())
    for key, value in model.ema_teacher.state_dict().items():
        assert torch.equal(value, student[key]), key
    student_ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in student_ids or p.requires_grad
                   for p in model.ema_teacher.parameters())
    model.train()
    assert not any(m.training for m in model.ema_teacher.modules())
    model.double()
    assert model.ema_teacher.heads.weight.dtype == torch.float64


def test_ema_update_is_m_teacher_plus_1_minus_m_student_after_a_step():
    model = ema_model(momentum=0.9).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = make_batch()
    sum(model(batch).values()).backward()
    optimizer.step()
    teacher_before = {k: v.clone() for k, v in model.ema_teacher.state_dict().items()}
    student = {k: v.clone() for k, v in model.state_dict().items()}

    losses = model(batch)  # the next step's forward moves the average first

    teacher = model.ema_teacher.state_dict()
    names = [name for name, _ in model.ema_teacher.named_parameters()]
    assert sum(not torch.equal(student[n], teacher_before[n]) for n in names) > len(names) // 2
    for name in names + ["backbone.bn1.running_mean", "heads.bottleneck.0.running_var"]:
        expected = 0.9 * teacher_before[name] + 0.1 * student[name]
        torch.testing.assert_close(teacher[name], expected, rtol=1e-6, atol=1e-7)
    assert teacher["backbone.bn1.num_batches_tracked"] == student[
        "backbone.bn1.num_batches_tracked"]

    # the KD loss is against the averaged teacher (eval mode), the only teacher here
    with torch.no_grad():
        student_logits = model.heads(model.backbone(model.preprocess_image(batch)),
                                     batch["targets"])["pred_class_logits"]
        ema = model.ema_teacher
        teacher_logits = ema(batch["images"]) @ ema.heads.weight.t()
    expected = 0.5 * hand_kl(student_logits, teacher_logits, 2.0)
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-4)


def test_ema_and_configured_teacher_losses_are_averaged(folder):
    config, weights, reference = save_varied_teacher(folder, "18x", seed=6)
    model = ema_model(configs=str(config), weights=str(weights)).train()
    assert model.teachers == model.external_teachers + (model.ema_teacher,)
    batch = make_batch()
    losses = model(batch)
    with torch.no_grad():
        student = model.heads(model.backbone(model.preprocess_image(batch)),
                              batch["targets"])["pred_class_logits"]
        kls = [hand_kl(student, t(batch["images"]) @ t.heads.weight.t(), 2.0)
               for t in (reference, model.ema_teacher)]
    assert losses["loss_kd"].item() == pytest.approx(0.5 * sum(kls) / 2, rel=1e-4)


def test_loading_weights_restarts_the_average_from_them(tmp_path):
    model = ema_model()
    torch.manual_seed(9)
    other = Baseline(model_cfg())
    path = tmp_path / "other.pth"
    torch.save({"model": other.state_dict()}, path)
    Checkpointer(model).load(path)  # what resume and MODEL.WEIGHTS do
    for key, value in other.state_dict().items():
        assert torch.equal(model.ema_teacher.state_dict()[key], value), key


def test_ema_momentum_out_of_range_is_an_error():
    with pytest.raises(ReidError, match=r"^KD.EMA.MOMENTUM must be in \[0, 1\] .*got 1.5$"):
        ema_model(momentum=1.5)
    with pytest.raises(ReidError, match=r"^KD.MODEL_CONFIG is empty; .* or set KD.EMA.ENABLED"):
        build_model(distiller_cfg())


# --- the distill flow's override of KD.MODEL_WEIGHTS ---------------------------------------------
@pytest.mark.parametrize("paths", [["a/teacher.pth"], ["a b/t1.pth", "c,d/t2.pth", "[x].pth"],
                                   ["[odd].pth"]])
def test_paths_override_round_trips_through_the_command_line_parser(paths):
    cfg = distiller_cfg(configs=[f"c{i}.yml" for i in range(len(paths))])
    merge_overrides(cfg, ["KD.MODEL_WEIGHTS", paths_override(paths)])
    assert [weights for _, weights in teacher_paths(cfg)] == paths
    assert isinstance(cfg.KD.MODEL_WEIGHTS, str) == (paths == ["a/teacher.pth"])
