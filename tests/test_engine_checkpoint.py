import logging

import pytest
import torch

from reid.engine.checkpoint import LAST_CHECKPOINT, Checkpointer
from reid.errors import ReidError
from reid.solver import build_lr_scheduler, build_optimizer
from reid.utils import comm
from toys import ToyReidNet, make_loader, solver_cfg

CFG = solver_cfg(OPT="Adam", BASE_LR=0.01, WARMUP_ITERS=3, STEPS=[2])


def trained_parts(seed=0, steps=3):
    """A toy model with an optimizer and scheduler that have taken ``steps`` steps."""
    torch.manual_seed(seed)
    model = ToyReidNet()
    optimizer = build_optimizer(CFG, model)
    scheduler = build_lr_scheduler(CFG, optimizer, iters_per_epoch=2)
    batch = next(iter(make_loader()))
    for _ in range(steps):
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_save_writes_everything_and_points_last_checkpoint_at_it(tmp_path):
    model, optimizer, scheduler = trained_parts()
    path = Checkpointer(model, tmp_path, optimizer, scheduler).save("model_0001", epoch=1,
                                                                     iteration=2)
    assert path == tmp_path / "model_0001.pth"
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_0001.pth"
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data.keys() == {"model", "optimizer", "scheduler", "epoch", "iteration"}
    assert (data["epoch"], data["iteration"]) == (1, 2)
    assert data["scheduler"]["last_epoch"] == 3
    assert torch.equal(data["model"]["heads.weight"], model.heads.weight)


def test_a_checkpoint_without_epoch_is_not_a_resume_point(tmp_path):
    model, optimizer, scheduler = trained_parts()
    checkpointer = Checkpointer(model, tmp_path, optimizer, scheduler)
    checkpointer.save("model_0002", epoch=2)
    checkpointer.save("model_precise_bn")
    assert checkpointer.last_checkpoint() == tmp_path / "model_0002.pth"


def test_only_rank_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    model, _, _ = trained_parts(steps=0)
    path = Checkpointer(model, tmp_path).save("model_0001", epoch=1)
    assert path == tmp_path / "model_0001.pth"
    assert list(tmp_path.iterdir()) == []


def failing_torch_save(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    raise OSError("No space left on device")


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, optimizer, scheduler = trained_parts()
    checkpointer = Checkpointer(model, tmp_path, optimizer, scheduler)
    checkpointer.save("model_0001", epoch=1)
    before = (tmp_path / "model_0001.pth").read_bytes()

    monkeypatch.setattr(torch, "save", failing_torch_save)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0001", epoch=1)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0002", epoch=2)
    monkeypatch.undo()

    assert (tmp_path / "model_0001.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_CHECKPOINT, "model_0001.pth"]
    assert checkpointer.last_checkpoint() == tmp_path / "model_0001.pth"
    torch.load(tmp_path / "model_0001.pth", weights_only=True)  # still readable


def test_load_restores_weights_and_returns_the_other_entries(tmp_path):
    model, optimizer, scheduler = trained_parts()
    Checkpointer(model, tmp_path, optimizer, scheduler).save("m", epoch=4, note="x")
    fresh, _, _ = trained_parts(seed=1, steps=0)
    rest = Checkpointer(fresh).load(tmp_path / "m.pth")
    assert_same_weights(fresh, model)
    assert rest == {"optimizer": rest["optimizer"], "scheduler": rest["scheduler"],
                    "epoch": 4, "note": "x"}


def test_fastreid_checkpoint_with_another_classifier_loads_the_rest(tmp_path, caplog):
    torch.manual_seed(0)
    source = ToyReidNet(num_classes=6)
    state = source.state_dict()
    state["heads.extra"] = torch.zeros(1)          # unexpected
    del state["backbone.2.running_var"]            # missing
    torch.save({"model": state, "__author__": "fastreid"}, tmp_path / "market_bot_R50.pth")

    torch.manual_seed(1)
    target = ToyReidNet(num_classes=4)
    heads_before = target.heads.weight.detach().clone()
    running_var_before = target.backbone[2].running_var.clone()
    with caplog.at_level(logging.WARNING, logger="reid.engine.checkpoint"):
        Checkpointer(target).load(tmp_path / "market_bot_R50.pth")

    assert torch.equal(target.backbone[1].weight, source.backbone[1].weight)
    assert torch.equal(target.heads.weight, heads_before)
    assert torch.equal(target.backbone[2].running_var, running_var_before)
    log = caplog.text
    assert "skipping heads.weight: checkpoint shape (6, 8), model shape (4, 8)" in log
    assert "skipping heads.bias" in log
    assert "not in the checkpoint" in log and "backbone.2.running_var" in log
    assert "does not have" in log and "heads.extra" in log


def test_a_bare_state_dict_loads(tmp_path):
    model, _, _ = trained_parts()
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    fresh, _, _ = trained_parts(seed=1, steps=0)
    Checkpointer(fresh).load(tmp_path / "bare.pth")
    assert_same_weights(fresh, model)


class NotATensor:
    pass


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"\x00garbage, not a zip", "cannot read checkpoint"),
    ({"model": NotATensor()}, "cannot read checkpoint"),   # refused by weights_only
    ({"epoch": 3}, "holds no model weights"),
])
def test_unusable_files_raise_a_reid_error_naming_the_path(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    model, _, _ = trained_parts(steps=0)
    with pytest.raises(ReidError, match=message) as info:
        Checkpointer(model).load(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_resume_restores_model_optimizer_scheduler_and_epoch(tmp_path):
    model, optimizer, scheduler = trained_parts()
    Checkpointer(model, tmp_path, optimizer, scheduler).save("model_0002", epoch=2)

    model2, optimizer2, scheduler2 = trained_parts(seed=1, steps=1)
    start = Checkpointer(model2, tmp_path, optimizer2, scheduler2).resume_or_load(
        "ignored-when-resuming.pth", resume=True)
    assert start == 2
    assert_same_weights(model2, model)
    assert scheduler2.last_epoch == scheduler.last_epoch == 3
    state, state2 = optimizer.state_dict(), optimizer2.state_dict()
    for key in state["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state["state"][key][name], state2["state"][key][name])
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_without_resume_only_the_weights_of_path_load(tmp_path):
    model, optimizer, scheduler = trained_parts()
    Checkpointer(model, tmp_path, optimizer, scheduler).save("model_0002", epoch=2)
    torch.save({"model": model.state_dict()}, tmp_path / "pretrained.pth")

    model2, optimizer2, scheduler2 = trained_parts(seed=1, steps=1)
    start = Checkpointer(model2, tmp_path, optimizer2, scheduler2).resume_or_load(
        tmp_path / "pretrained.pth", resume=False)
    assert start == 0
    assert_same_weights(model2, model)
    assert scheduler2.last_epoch == 1  # untouched


def test_resume_with_nothing_saved_is_a_user_error(tmp_path):
    model, optimizer, scheduler = trained_parts(steps=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ReidError) as error:
        Checkpointer(model, tmp_path / "empty", optimizer, scheduler).resume_or_load(
            "", resume=True)
    assert str(error.value) == (f"--resume: no checkpoint to resume from in {tmp_path / 'empty'}"
                                " (no last_checkpoint file); drop --resume to start training "
                                "afresh")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
