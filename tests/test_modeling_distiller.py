"""Distiller: frozen eval-mode teacher outside the student's state, and the KD loss by hand."""
import pytest
import torch
import yaml

from oracles import hand_js, hand_kl
from reid.config import load_config
from reid.errors import ReidError
from reid.modeling import Baseline, build_model
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
