"""Stopping a training cleanly on SIGTERM, SIGINT or SIGUSR1.

A preempted cloud VM, a Kubernetes pod eviction and ``scancel`` send SIGTERM some seconds
before SIGKILL; Slurm's ``--signal=USR1@N`` warns N seconds ahead; Ctrl-C is SIGINT. While a
training runs, such a signal only raises a flag: every rank finishes the step it is in, the
ranks agree on the iteration to stop at (one all-reduce per step, the largest signal number
received by any rank wins), the checkpointing hook writes a checkpoint at that iteration (rank
0 writes; all ranks gather their random state into it) and ``Preempted`` is raised: the command
line exits with ``128 + the signal's number`` (143 for SIGTERM, 130 for SIGINT, 138 for
SIGUSR1) after printing ``STOPPED_PREFIX`` and where the checkpoint is. A second signal while
the checkpoint is written is noted and ignored; the write is atomic anyway.

The handlers are installed in the main thread; when the training runs in another thread (a
Prefect task), the command line's handlers forward the signal through ``request_stop``.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

import torch

from reid.engine.hook_base import HookBase
from reid.errors import Preempted
from reid.utils import comm

if TYPE_CHECKING:
    from reid.engine.hooks import PeriodicCheckpointer

logger = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1")
                     if hasattr(signal, name))
_running: list["StopOnSignal"] = []  # the trainings of this process that listen


def request_stop(signum: int) -> bool:
    """Ask the running trainings to stop at the end of their step; False when none runs."""
    for hook in list(_running):
        hook.note(signum)
    return bool(_running)


class StopOnSignal(HookBase):
    """The hook that turns a stop signal into a checkpoint and ``Preempted`` (put it after
    ``checkpoints``, the ``PeriodicCheckpointer`` whose ``save_now`` it calls)."""

    def __init__(self, checkpoints: "PeriodicCheckpointer") -> None:
        self.checkpoints = checkpoints
        self.received = 0
        self._previous: dict[int, Any] = {}

    def note(self, signum: int) -> None:
        if self.received:
            logger.warning("%s received while stopping: ignored (the checkpoint is being "
                           "written)", signal.Signals(signum).name)
            return
        self.received = signum
        logger.warning("%s received: stopping after this step with a checkpoint",
                       signal.Signals(signum).name)

    def before_train(self) -> None:
        self.received = 0
        _running.append(self)
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        request_stop(signum)

    def after_step(self) -> None:
        signum = self._agreed_signal()
        if not signum:
            return
        trainer = self.trainer
        saved_here = self.checkpoints.last_iteration == trainer.done  # by its own period
        path = trainer.last_checkpoint if saved_here else self.checkpoints.save_now()
        raise Preempted(signum, trainer.done, str(path))

    def after_train(self) -> None:
        if self in _running:
            _running.remove(self)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _agreed_signal(self) -> int:
        """The largest signal number any rank received (0: none); every rank calls it."""
        if comm.get_world_size() == 1:
            return self.received
        flag = torch.tensor([float(self.received)], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        return int(comm.all_reduce_tensor(flag, "max").item())
