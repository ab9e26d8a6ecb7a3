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
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from reid.config import CfgNode
from reid.errors import ReidError, one_line
from tasks.data_version import DataVersion, data_version, dataset_names

logger = logging.getLogger(__name__)

EXPERIMENT = "reid"
PARENT_TAG = "mlflow.parentRunId"
RECIPE_TAG = "reid.recipe"  # the recipe file a run was configured from
# The version of the data a run read (tasks/data_version.py): "dvc:<md5>.dir" or
# "content:<md5>", what the model registry and `reid compare` go by.
DATA_VERSION_TAG = "reid.data.version"
DATA_TAG = "dvc.data.md5"  # the .dvc md5 of the datasets root, only when that is the version
DATA_NOTE_TAG = "reid.data.note"  # why a .dvc file was not used, or why there is no version
MAX_BATCH = 100  # MLflow's limit of params per log_batch call
SQLITE_SCHEME = "sqlite:///"


def git_commit(cwd: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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

    def log_dataset(self, run_id: str, cfg: CfgNode, version: DataVersion | None = None
                    ) -> None:
        """Record the version of the data ``cfg`` reads (``version`` when given) as the run's
        input dataset and tags. Data that cannot be read yet (a flow's parent run, logged
        before ``prepare`` generates the set) gets a note instead of a version."""
        try:
            version = version or data_version(cfg)
        except ReidError as exc:
            logger.warning("no data version recorded for run %s: %s", run_id, one_line(exc))
            self.client.set_tag(run_id, DATA_NOTE_TAG, one_line(exc)[:5000])
            return
        dataset = Dataset(name=",".join(dataset_names(cfg)), digest=version.digest[:36],
                          source_type="dvc" if version.kind == "dvc" else "local",
                          source=version.root)
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context",
                                                                         "training")])])
        tags = {DATA_VERSION_TAG: version.tag}
        if version.kind == "dvc":
            tags.update({DATA_TAG: version.digest, "dvc.file": version.dvc_file})
        if version.note:
            tags[DATA_NOTE_TAG] = version.note
        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
