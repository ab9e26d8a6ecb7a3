"""What a trainer hook is and where training metrics go, importable by the trainer and by
every hook module without importing one another.

A hook overrides any of ``before_train``, ``before_epoch``, ``before_step``, ``after_step``,
``after_epoch``, ``after_train``; the trainer sets ``hook.trainer`` before training starts.
``after_train`` also runs when training fails, so it must check ``trainer.completed``
before doing end-of-training work. A hook whose state matters to the next step (sums being
averaged, the best result so far) returns it from ``state_dict``: it goes into the training
checkpoint and comes back through ``load_state_dict`` on resume.
"""
from __future__ import annotations

from typing import Any, Callable

# Where training metrics go: ``sink(metrics, step)``, a plain callable, so the library never
# imports a tracker (tasks/tracking.py supplies the MLflow one).
MetricsSink = Callable[[dict, int], None]


class HookBase:
    # The reid.engine.trainer.Trainer running this hook (its state is documented there); not
    # imported here, so that the trainer can import this module.
    trainer: Any

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
