"""MLflow tracking for pipeline runs: a parent run per pipeline, a nested run per stage.

Uses ``MlflowClient`` with explicit run ids (no global "active run"), so tasks running in
Prefect's worker threads and stage processes started by DVC all log to the right run.
"""
from __future__ import annotations

import logging
import math
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import tasks.environment  # noqa: F401  (telemetry off, embedded store) before mlflow loads
import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from reid.config import CfgNode

logger = logging.getLogger(__name__)

EXPERIMENT = "reid"
PARENT_TAG = "mlflow.parentRunId"
RECIPE_TAG = "reid.recipe"  # the recipe file a run was configured from
DATA_TAG = "dvc.data.md5"  # the DVC hash of the datasets root a run read
MAX_BATCH = 100  # MLflow's limit of params per log_batch call
SQLITE_SCHEME = "sqlite:///"


def git_commit(cwd: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_digest(dvc_file: str | Path = "data.dvc") -> Optional[str]:
    """The md5 that ``data.dvc`` records for the datasets root (None when there is none)."""
    path = Path(dvc_file)
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def local_store_path(tracking_uri: str) -> Optional[Path]:
    """The database file or directory of a local tracking store, None for a server."""
    for scheme in (SQLITE_SCHEME, "file://"):
        if tracking_uri.startswith(scheme):
            return Path(tracking_uri[len(scheme):])
    return None if "://" in tracking_uri else Path(tracking_uri)


class Tracker:
    def __init__(self, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = self._experiment(experiment)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        uri = self.client.tracking_uri
        location = None
        if uri.startswith(SQLITE_SCHEME):
            # Artifacts beside the database, absolute, so any working directory finds them.
            location = (local_store_path(uri).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    # ------------------------------------------------------------------ runs
    def start(self, name: str, parent_id: str | None = None, tags: dict | None = None) -> str:
        tags = {"mlflow.runName": name, "mlflow.source.git.commit": git_commit(), **(tags or {})}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def end(self, run_id: str, failed: bool = False) -> None:
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    @contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: dict | None = None,
            existing_id: str | None = None) -> Iterator[str]:
        """A run that ends FINISHED, or FAILED when the block raises."""
        run_id = existing_id or self.start(name, parent_id, tags)
        try:
            yield run_id
        except BaseException:
            self.end(run_id, failed=True)
            raise
        self.end(run_id)

    # ------------------------------------------------------------------ logging
    def log_config(self, run_id: str, cfg: CfgNode, config_file: str | Path | None = None) -> None:
        """The flattened config as params, the merged config as ``config.yaml``, the recipe file."""
        params = [Param(key, str(value)[:6000]) for key, value in cfg.flatten()]
        for start in range(0, len(params), MAX_BATCH):
            self.client.log_batch(run_id, params=params[start:start + MAX_BATCH])
        self.client.log_text(run_id, cfg.dump(), "config.yaml")
        if config_file is not None:
            self.client.set_tag(run_id, RECIPE_TAG, str(config_file))  # `reid compare` shows it
        if config_file is not None and Path(config_file).is_file():
            self.client.log_artifact(run_id, str(config_file), "recipe")

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()
                 if isinstance(value, (int, float)) and math.isfinite(value)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def sink(self, run_id: str):
        """A ``sink(metrics, step)`` callable for the library's trainer."""
        return lambda metrics, step: self.log_metrics(run_id, metrics, step)

    def log_results(self, run_id: str, results: dict) -> None:
        """``{test set: {metric: value}}`` as final metrics named ``<set>.<metric>``."""
        flat = {f"{name}.{metric}": value for name, values in results.items()
                for metric, value in values.items()}
        self.log_metrics(run_id, flat)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dataset(self, run_id: str, cfg: CfgNode, dvc_file: str | Path = "data.dvc") -> None:
        """Record the datasets root with its DVC hash as the run's input dataset."""
        digest = dvc_digest(dvc_file) or "untracked"
        names = ",".join(dict.fromkeys(list(cfg.DATASETS.NAMES) + list(cfg.DATASETS.TESTS)))
        dataset = Dataset(name=names, digest=digest[:36], source_type="dvc",
                          source=str(Path(cfg.DATASETS.ROOT).resolve()))
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context",
                                                                         "training")])])
        self.client.set_tag(run_id, DATA_TAG, digest)
        self.client.set_tag(run_id, "dvc.file", str(dvc_file))
