"""SIGTERM / SIGINT / SIGUSR1 during training: the step finishes, a checkpoint is written at
that iteration, ``Preempted`` is raised; a second signal while the checkpoint is written changes
nothing; the handlers are put back afterwards. On the toy trainer, signals sent to this very
process (the command-line path is in test_engine_resume.py)."""
from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

from reid.engine.checkpoint import Checkpointer
from reid.engine.hooks import HookBase, PeriodicCheckpointer
from reid.engine.preemption import StopOnSignal, request_stop
from reid.errors import Preempted, Terminated
from toys import make_trainer


class SignalAt(HookBase):
    """Sends ``signum`` to this process during step ``iteration`` (1-based)."""

    def __init__(self, iteration: int, signum: int) -> None:
        self.iteration, self.signum = iteration, signum

    def before_step(self):
        if self.trainer.iter + 1 == self.iteration:
            os.kill(os.getpid(), self.signum)


class SignallingCheckpointer(Checkpointer):
    """Sends SIGTERM and SIGINT to this process in the middle of every save."""

    def save(self, name, **data):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        return super().save(name, **data)


def stoppable(tmp_path, hooks=(), checkpointer_type=Checkpointer):
    def build(model, optimizer, scheduler):
        checkpoints = PeriodicCheckpointer(checkpointer_type(model, tmp_path, optimizer,
                                                             scheduler), 0, 5)
        return list(hooks) + [checkpoints, StopOnSignal(checkpoints)]
    return make_trainer(max_epoch=5, hooks=build)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_stops_after_the_step_with_a_checkpoint_there(tmp_path, signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    trainer = stoppable(tmp_path, hooks=[SignalAt(3, signum)])
    with pytest.raises(Preempted) as stop:
        trainer.train()
    assert (stop.value.iteration, stop.value.exit_code) == (3, 128 + signum)
    assert stop.value.checkpoint == str(tmp_path / "model_iter_0000003.pth")
    assert str(stop.value) == (f"{signal.Signals(signum).name} at iteration 3; checkpoint "
                               f"{tmp_path / 'model_iter_0000003.pth'}; --resume continues "
                               "from it")
    saved = torch.load(tmp_path / "model_iter_0000003.pth", weights_only=True)
    assert saved["iteration"] == 3 and saved["trainer"]["iteration"] == 3
    for key, value in trainer.model.state_dict().items():  # the step was applied, then saved
        assert torch.equal(saved["model"][key], value), key
    assert isinstance(stop.value, Terminated)  # unwinds like SIGTERM: runs closed as KILLED
    assert {s: signal.getsignal(s) for s in before} == before  # handlers put back
    assert not request_stop(signal.SIGTERM)  # nothing listens any more


def test_a_second_signal_during_the_save_changes_nothing(tmp_path, caplog):
    trainer = stoppable(tmp_path, hooks=[SignalAt(2, signal.SIGTERM)],
                        checkpointer_type=SignallingCheckpointer)
    with caplog.at_level(logging.WARNING, logger="reid.engine.preemption"):
        with pytest.raises(Preempted) as stop:
            trainer.train()
    assert stop.value.iteration == 2
    saved = torch.load(tmp_path / "model_iter_0000002.pth", weights_only=True)
    assert saved["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint",
                                                          "model_iter_0000002.pth"]
    assert "SIGTERM received while stopping: ignored" in caplog.text
    assert "SIGINT received while stopping: ignored" in caplog.text


def test_a_stop_at_a_periodic_checkpoint_writes_no_second_one(tmp_path):
    def build(model, optimizer, scheduler):
        checkpoints = PeriodicCheckpointer(Checkpointer(model, tmp_path, optimizer, scheduler),
                                           0, 5, period_iters=3)
        return [SignalAt(3, signal.SIGTERM), checkpoints, StopOnSignal(checkpoints)]
    trainer = make_trainer(max_epoch=5, hooks=build)
    with pytest.raises(Preempted) as stop:
        trainer.train()
    assert stop.value.checkpoint == str(tmp_path / "model_iter_0000003.pth")
    assert trainer.hooks[1].saved == [str(tmp_path / "model_iter_0000003.pth")]
