"""Stage caching across runs, looked up in MLflow: a stage whose inputs equal those of an
earlier successful run of it is not computed again.

The key of a stage run is a sha256 over: the stage's name, its part of the merged config
(``CONFIG_PARTS``: training ignores TEST.*, evaluation ignores SOLVER.*, ...; OUTPUT_DIR is
always in, since the outputs live there), the data version (``tasks/data_version.py``), the
code version (the bytes of the ``reid`` package's Python files) and the sha256 of the files it
reads (the checkpoint precise-BN or evaluate load). A finished stage run records its key
(tag ``reid.cache.key``) and its result with the size and sha256 of every file the result
names (artifact ``cache/result.json``). A later run with the same key reuses that result only
when every one of those files is still there with the same bytes: a deleted or changed
checkpoint makes the stage run again. The reusing run is an ordinary stage run (same name,
same parent) tagged ``reid.cache.reused_run`` with the run it reuses and carrying its metrics.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from mlflow.exceptions import MlflowException

import reid
from reid.config import CfgNode
from reid.errors import ReidError, one_line
from reid.modeling.meta_arch.teachers import as_paths
from tasks import lineage
from tasks.data_version import data_version
from tasks.model_registry import file_sha256
from tasks.offline import config_value, output_dir_tags
from tasks.tracking import PARENT_TAG, Tracker

logger = logging.getLogger(__name__)

KEY_TAG = "reid.cache.key"
REUSED_TAG = "reid.cache.reused_run"
RESULT_ARTIFACT = "cache/result.json"
# Result entries that describe that run only (its report, its registration): not reused.
RUN_ONLY = ("visual", "registered")
# The config sections each stage's outputs depend on; anything else may change freely.
EVERYTHING_BUT = {"train": ("TEST",), "distill": ("TEST",)}
CONFIG_PARTS = {
    "precise_bn": ("MODEL", "INPUT", "DATASETS", "DATALOADER", "TEST.PRECISE_BN", "SEED"),
    "evaluate": ("MODEL", "INPUT", "DATASETS", "DATALOADER", "TEST"),
}
CACHED_STAGES = frozenset(EVERYTHING_BUT) | frozenset(CONFIG_PARTS)


@dataclass(frozen=True)
class Hit:
    run_id: str   # the run whose outputs are reused
    result: dict  # its stage result, as the stage function returned it


# --------------------------------------------------------------------------- the key
@lru_cache(maxsize=None)
def code_version() -> str:
    """sha256 over the ``reid`` package's Python files (path and bytes), once per process."""
    root = Path(reid.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def config_part(stage: str, cfg: CfgNode) -> dict:
    """The flattened keys of ``cfg`` that stage ``stage`` depends on, plus OUTPUT_DIR."""
    flat = {key: value for key, value in cfg.flatten()}
    if stage in EVERYTHING_BUT:
        dropped = EVERYTHING_BUT[stage]
        return {k: v for k, v in flat.items() if not _under(k, dropped)}
    return {k: v for k, v in flat.items() if _under(k, CONFIG_PARTS[stage]) or k == "OUTPUT_DIR"}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def weights_read(stage: str, cfg: CfgNode, tracking_uri: str | None) -> dict:
    """What a training stage loads besides the data: the sha256 of each MODEL.WEIGHTS /
    KD.MODEL_WEIGHTS file (a path keeps its name when a nightly run overwrites it) and the
    lineage of model URIs (an alias moves): the key changes when they do."""
    if stage not in EVERYTHING_BUT:
        return {}
    local, tags = lineage.resolve_config(cfg, tracking_uri)
    files = [p for key in lineage.LINEAGE_KEYS for p in as_paths(config_value(local, key))]
    return {"files": [file_sha256(p) for p in files if Path(p).is_file()], "lineage": tags}


def stage_key(stage: str, cfg: CfgNode, files: tuple[str, ...] = (),
              tracking_uri: str | None = None) -> str:
    """The cache key of running ``stage`` on ``cfg`` reading ``files`` (module doc)."""
    parts = {"stage": stage, "config": config_part(stage, cfg), "data": data_version(cfg).tag,
             "code": code_version(), "inputs": [file_sha256(path) for path in files],
             "weights": weights_read(stage, cfg, tracking_uri)}
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- outputs
def result_files(result: dict) -> list[str]:
    """Every file a stage result names: its checkpoint(s) and its ``files``."""
    named = [result.get("checkpoint"), result.get("best"), *result.get("files", [])]
    return list(dict.fromkeys(p for p in named if isinstance(p, str) and p))


def fingerprint(paths: list[str]) -> dict[str, list]:
    return {path: [Path(path).stat().st_size, file_sha256(path)] for path in paths}


def still_there(recorded: dict[str, list]) -> bool:
    """Whether every recorded file exists with the recorded size and sha256."""
    for path, (size, sha) in recorded.items():
        file = Path(path)
        if not file.is_file() or file.stat().st_size != size or file_sha256(file) != sha:
            logger.info("cached output %s is gone or changed: the stage runs again", path)
            return False
    return True


# --------------------------------------------------------------------------- MLflow
def record(tracker: Tracker, run_id: str, key: str, result: dict) -> None:
    """Mark finished stage run ``run_id`` as the cache entry of ``key``."""
    kept = {name: value for name, value in result.items() if name not in RUN_ONLY}
    entry = {"result": kept, "files": fingerprint(result_files(result))}
    tracker.client.log_text(run_id, json.dumps(entry, default=str), RESULT_ARTIFACT)
    tracker.client.set_tag(run_id, KEY_TAG, key)


def lookup(tracker: Tracker, key: str) -> Optional[Hit]:
    """The newest finished run of ``key`` whose outputs are all still in place."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        if REUSED_TAG in run.data.tags:
            continue  # a reusing run points at the original: check that one
        entry = _entry(tracker, run.info.run_id)
        if entry is not None and still_there(entry["files"]):
            return Hit(run.info.run_id, entry["result"])
    return None


def _entry(tracker: Tracker, run_id: str) -> Optional[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run_id, RESULT_ARTIFACT, tmp)
            return json.loads(Path(local).read_text())
        except (MlflowException, OSError, ValueError) as exc:
            logger.warning("cache entry of run %s unreadable (%s): not reused", run_id,
                           one_line(exc))
            return None


def newest_stage_run(tracker: Tracker, parent_id: str, stage: str) -> Optional[str]:
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`reid.stage` = '{stage}' "
        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
        max_results=1)
    return runs[0].info.run_id if runs else None


def reuse(tracker: Tracker, parent_id: str, stage: str, cfg: CfgNode, key: str,
          hit: Hit) -> dict:
    """A stage run under ``parent_id`` standing for ``hit``: tagged with the run it reuses,
    its config, and the reused run's metrics (whole histories: the curves stay drawable)."""
    tags = {"reid.stage": stage, REUSED_TAG: hit.run_id, KEY_TAG: key, **output_dir_tags(cfg)}
    with tracker.run(stage, parent_id, tags=tags) as run_id:
        tracker.log_config(run_id, cfg)
        client = tracker.client
        for name in client.get_run(hit.run_id).data.metrics:
            history = client.get_metric_history(hit.run_id, name)
            for start in range(0, len(history), 1000):
                client.log_batch(run_id, metrics=history[start:start + 1000])
    logger.info("%s: reusing the outputs of run %s (same config part, data, code and "
                "inputs)", stage, hit.run_id)
    return hit.result


def cached(run: Callable[..., dict], stage: str, cfg: CfgNode, tracker: Tracker,
           parent_id: str, /, reads: tuple[str, ...] = (), use_cache: bool = True, **inputs
           ) -> dict:
    """``run(cfg, tracker, parent_id, **inputs)`` (a stage's Prefect task) unless an earlier
    run of the same key can be reused; a fresh run is recorded for later reuse."""
    if stage not in CACHED_STAGES:
        raise ValueError(f"stage {stage!r} is not cacheable ({', '.join(sorted(CACHED_STAGES))})")
    try:
        key = stage_key(stage, cfg, reads, tracker.client.tracking_uri)
    except (ReidError, OSError) as exc:  # no data version: nothing safe to key on
        logger.warning("%s: not cached (%s)", stage, one_line(exc))
        return run(cfg, tracker, parent_id, **inputs)
    hit = lookup(tracker, key) if use_cache else None
    if hit is not None:
        return reuse(tracker, parent_id, stage, cfg, key, hit)
    result = run(cfg, tracker, parent_id, **inputs)
    run_id = newest_stage_run(tracker, parent_id, stage)
    if run_id is not None:
        record(tracker, run_id, key, result)
    return result
