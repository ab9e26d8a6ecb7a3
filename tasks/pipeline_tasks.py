"""Prefect tasks: thin adapters over ``tasks/tracked.py`` (one stage each).

Retries cover transient failures only (I/O hiccups, a busy tracking store); a user-caused
ReidError or a diverged training fails at once, since a retry would fail the same way.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from reid.engine.checkpoint import has_training_checkpoint
from reid.errors import ReidError
from reid.stage_table import STAGES
from tasks import distributed, tracked


def transient_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry unless the failure is the user's to fix."""
    try:
        state.result()
    except ReidError:
        return False
    except Exception:
        return True
    return True


def stage_task(name: str, retries: int = 2):
    """The Prefect task of stage ``name`` of the stage table: its tracked adapter, called as
    ``task(cfg, tracker, parent_id, **inputs)``."""
    stage = STAGES[name]
    adapter = stage.adapter()

    def run(cfg, tracker, parent_id=None, **inputs):
        return adapter(stage, cfg, tracker, parent_id, **inputs)
    return _task(run, name, retries)


def _task(fn, name: str, retries: int):
    return task(fn, name=name, retries=retries, retry_delay_seconds=5,
                retry_condition_fn=transient_only, cache_policy=NO_CACHE)


def _train_resuming_on_retry(cfg, tracker, parent_id=None, resume=False, stage="train",
                             nproc_per_node=1):
    """A retried training resumes from its last checkpoint (when it wrote one) instead of
    starting over. With ``nproc_per_node > 1`` it runs as that many torchrun workers
    (``tasks/distributed.py``)."""
    resume = resume or (task_run.run_count > 1 and has_training_checkpoint(cfg.OUTPUT_DIR))
    if nproc_per_node > 1:
        return distributed.train(cfg, nproc_per_node, tracker.client.tracking_uri, parent_id,
                                 resume=resume, stage=STAGES[stage].command)
    return tracked.train(STAGES[stage], cfg, tracker, parent_id, resume=resume)


prepare_task = stage_task("prepare")
train_task = _task(_train_resuming_on_retry, "train", retries=1)
precise_bn_task = stage_task("precise_bn")
evaluate_task = stage_task("evaluate")
