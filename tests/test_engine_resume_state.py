"""What a training checkpoint must carry beyond the weights, checked by resuming from the
uninterrupted run's own mid-epoch checkpoint in a fresh OUTPUT_DIR: the KD.EMA teacher (not
part of the student's state_dict), MoCo's queue (buffers); and the inputs a resume must refuse
through the command line, each with one ``reid: error:`` line and nothing overwritten; and
model-side randomness (dropout) drawing the same after a resume."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import RECIPE, TINY_DATA, TINY_TRAIN, as_overrides
from reid import stages
from reid.cli import main
from reid.config import load_config
from reid.engine.checkpoint import LAST_CHECKPOINT, Checkpointer
from reid.engine.events import read_metrics
from reid.engine.hooks import HookBase, PeriodicCheckpointer
from toys import ToyReidNet, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {  # 3 iterations per epoch; a checkpoint after iteration 4 (inside epoch 2)
    "MODEL.BACKBONE.NAME": "build_osnet_backbone",
    "MODEL.BACKBONE.DEPTH": "x0_25",
    "MODEL.BACKBONE.FEAT_DIM": 128,
    "SOLVER.MAX_EPOCH": 2,
    "SOLVER.CHECKPOINT_PERIOD": 0,
    "SOLVER.CHECKPOINT_PERIOD_ITERS": 4,
    "SOLVER.LOG_PERIOD": 1,
}
ARCHITECTURES = {
    "kd-ema": {"MODEL.META_ARCHITECTURE": "Distiller", "KD.EMA.ENABLED": True,
               "KD.EMA.MOMENTUM": 0.5},
    "moco": {"MODEL.META_ARCHITECTURE": "MoCo", "MODEL.QUEUE_SIZE": 40},
}


def config(root: Path, output: Path, **changes):
    return load_config(str(RECIPE), as_overrides({**TINY_DATA, **TINY_TRAIN, **SMALL,
                                                  "DATASETS.ROOT": str(root),
                                                  "OUTPUT_DIR": str(output), **changes}))


def resume_copy(source: Path, target: Path, checkpoint: str) -> Path:
    """``target`` holding only ``source``'s ``checkpoint`` as the point to resume from."""
    target.mkdir(parents=True)
    shutil.copy(source / checkpoint, target / checkpoint)
    (target / LAST_CHECKPOINT).write_text(checkpoint)
    return target


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_a_resumed_run_continues_exactly(tiny_root, tmp_path, name):
    changes = ARCHITECTURES[name]
    stages.train(config(tiny_root, tmp_path / "whole", **changes))
    saved = torch.load(tmp_path / "whole" / "model_iter_0000004.pth", weights_only=True)
    if name == "kd-ema":
        assert saved["ema_teacher"] and set(saved["ema_teacher"]) <= set(saved["model"])
    else:
        assert int(saved["model"]["memory.queue_ptr"]) == (4 * 16) % 40

    resumed = resume_copy(tmp_path / "whole", tmp_path / "resumed", "model_iter_0000004.pth")
    stages.train(config(tiny_root, resumed, **changes), resume=True)

    expected = {r["iteration"]: r for r in read_metrics(tmp_path / "whole" / "metrics.json")}
    got = read_metrics(resumed / "metrics.json")
    assert [r["iteration"] for r in got] == [5, 6]
    for record in got:
        for key, value in record.items():
            if key not in ("images_per_sec", "time"):  # wall-clock figures
                assert value == pytest.approx(expected[record["iteration"]][key], abs=1e-6), key
    final = torch.load(resumed / "model_final.pth", weights_only=True)
    reference = torch.load(tmp_path / "whole" / "model_final.pth", weights_only=True)
    for part in ("model",) + (("ema_teacher",) if name == "kd-ema" else ()):
        for key, value in reference[part].items():
            assert torch.allclose(final[part][key].double(), value.double(), rtol=0,
                                  atol=1e-6), (part, key)


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory, one_thread) -> Path:
    output = tmp_path_factory.mktemp("trained") / "out"
    stages.train(config(tiny_root, output))
    return output


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()
            and p.name not in ("log.txt", ".reid.lock")}


def one_error_line(capsys, args: list[str]) -> str:
    """The one error line of ``reid ARGS`` (the log's INFO lines go to stderr too)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("reid: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


def train_args(root: Path, output: Path, **changes) -> list[str]:
    return ["train", "--no-track", "--resume", "--config", str(RECIPE),
            *as_overrides({**TINY_DATA, **TINY_TRAIN, **SMALL, "DATASETS.ROOT": str(root),
                           "OUTPUT_DIR": str(output), **changes})]


def test_resume_with_no_checkpoint_is_refused(tiny_root, tmp_path, capsys):
    line = one_error_line(capsys, train_args(tiny_root, tmp_path / "empty"))
    assert line == (f"reid: error: --resume: no checkpoint to resume from in {tmp_path / 'empty'}"
                    " (no last_checkpoint file); drop --resume to start training afresh")
    assert not (tmp_path / "empty" / "config.yaml").exists()


def test_a_checkpoint_of_another_config_is_refused(trained, tiny_root, tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(trained, output)
    before = snapshot(output)
    line = one_error_line(capsys, train_args(tiny_root, output,
                                             **{"MODEL.BACKBONE.WITH_IBN": True}))
    assert line.startswith(f"reid: error: checkpoint {output / 'model_final.pth'} was written "
                           "by another config (missing backbone.")
    assert line.endswith("resume with the config that wrote it, or start afresh in another "
                         "OUTPUT_DIR")
    assert snapshot(output) == before


def test_a_truncated_checkpoint_is_refused(trained, tiny_root, tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(trained, output)
    final = output / "model_final.pth"
    final.write_bytes(final.read_bytes()[:100_000])
    before = snapshot(output)
    line = one_error_line(capsys, train_args(tiny_root, output))
    assert line.startswith(f"reid: error: cannot read checkpoint {final}: it is a zip archive "
                           "but not a complete torch checkpoint (truncated or foreign)")
    assert snapshot(output) == before


# --------------------------------------------------------------------------- dropout
class DropoutNet(ToyReidNet):
    """The toy model with dropout on its features: each training step draws a mask."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, batch):
        if not self.training:
            return super().forward(batch)
        feats = self.drop(self.backbone(batch["images"]))
        return {"loss_cls": torch.nn.functional.cross_entropy(self.heads(feats),
                                                              batch["targets"])}


class CrashAt(HookBase):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self):
        if self.trainer.done == self.iteration:
            raise KeyboardInterrupt("machine lost")


def test_dropout_draws_the_same_masks_after_a_resume_inside_an_epoch(tmp_path):
    """The toy loader's sampler cannot skip batches: the trainer draws and drops them."""
    def trainer(seed, hooks=()):
        def build(model, optimizer, scheduler):
            checkpoints = PeriodicCheckpointer(Checkpointer(model, tmp_path, optimizer,
                                                            scheduler), 0, 4, period_iters=3)
            return [*hooks, checkpoints]
        torch.manual_seed(seed)
        return make_trainer(max_epoch=4, model=DropoutNet(), hooks=build, seed=seed)

    whole = trainer(0)
    whole.train()
    with pytest.raises(KeyboardInterrupt):
        trainer(0, hooks=[CrashAt(5)]).train()  # last checkpoint: iteration 3, inside epoch 2

    resumed = trainer(7)  # other initial weights and random state
    checkpointer = resumed.hooks[-1].checkpointer
    state = checkpointer.resume_state(None, resume=True)
    start = resumed.load_state_dict(state["trainer"])
    assert start == 3
    resumed.train(start_iter=start)
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6), key
