"""MLflow tracking for pipeline runs: a parent run per pipeline, a nested run per stage.

Uses ``MlflowClient`` with explicit run ids (no global "active run"), so tasks running in
Prefect's worker threads and stage processes started by DVC all log to the right run.
"""
from __future__ import annotations

import logging
import math
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient, get_tracking_uri

from reid.config import CfgNode
from reid.errors import ReidError, one_line
from tasks.data_version import DataVersion, data_version, dataset_names
from tasks.offline import OUTPUT_DIR_TAG

try:
    import fcntl
except ImportError:  # not POSIX (Windows): local stores are not locked there
    fcntl = None

logger = logging.getLogger(__name__)

EXPERIMENT = "reid"
PARENT_TAG = "mlflow.parentRunId"
RECIPE_TAG = "reid.recipe"  # the recipe file a run was configured from
# The version of the data a run read (tasks/data_version.py): "dvc:<md5>.dir" or
# "content:<md5>", what the model registry and `reid compare` go by.
DATA_VERSION_TAG = "reid.data.version"
DATA_TAG = "dvc.data.md5"  # the .dvc md5 of the datasets root, only when that is the version
DATA_NOTE_TAG = "reid.data.note"  # why a .dvc file was not used, or why there is no version
# A run id: stage runs started in this environment nest under it (the flow's parent run for
# its torchrun workers, or `REID_PARENT_RUN_ID=<run id> dvc repro`).
PARENT_RUN_ENV = "REID_PARENT_RUN_ID"
MAX_BATCH = 100  # MLflow's limit of params per log_batch call
SQLITE_SCHEME = "sqlite:///"
ABANDONED_TAG = "reid.abandoned"
ERROR_TAG = "reid.error"  # why a FAILED run failed: the error's one line
SERVER_TIMEOUT_S = 5  # one check at start; MLflow's own client retries for minutes
# MLflow 3's UI opens an experiment on its GenAI overview (traces, token usage) unless the
# experiment says it holds model training: then it opens on the runs table. The tag and value
# are the ones the UI's own "Model training" switch writes.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


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


def check_server(tracking_uri: str, timeout: float = SERVER_TIMEOUT_S) -> None:
    """A ReidError at once when an MLflow server does not answer (any HTTP answer will do:
    a proxy or an authenticating server answers too); nothing for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReidError(f"the MLflow tracking server {tracking_uri} (MLFLOW_TRACKING_URI) does "
                        f"not answer within {timeout:g} s ({reason}): start it, point "
                        "MLFLOW_TRACKING_URI at a running server or unset it for the embedded "
                        "store, or pass --no-track to a stage command") from None


@contextmanager
def store_lock(tracking_uri: str, purpose: str) -> Iterator[None]:
    """Exclusive across processes on this machine for ``purpose`` on a local store (SQLite or
    a file store) on a POSIX system; a no-op for a server, which serialises on its own."""
    store = local_store_path(tracking_uri)
    if store is None or fcntl is None:
        yield
        return
    store.parent.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in purpose)
    with open(store.parent / f".{store.name}.{safe}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def interrupted(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM: KeyboardInterrupt (``reid.errors.Terminated`` too), or the signal
    exceptions Prefect raises inside a flow run (its ``ExternalSignal`` family; matched by
    name, as this module does not import Prefect)."""
    return isinstance(exc, KeyboardInterrupt) or any(
        cls.__name__ == "ExternalSignal" for cls in type(exc).__mro__)


# In a link to MLflow 3's UI: its "Model training" view (runs, metrics) instead of the GenAI
# overview it opens on. 3.17 reads the view from the link or the browser's last choice, not
# from the experiment's kind (benchmarks/mlflow_ui_check.py).
ML_VIEW = "workflowType=machine_learning"


def ui_link(run_id: str, tracking_uri: str | None = None) -> str:
    """Where to see ``run_id`` in the MLflow UI: its page on a tracking server, or for a local
    store the ``mlflow ui`` command and the page it will serve."""
    uri = tracking_uri or get_tracking_uri()
    experiment = MlflowClient(uri).get_run(run_id).info.experiment_id
    page = f"#/experiments/{experiment}/runs/{run_id}?{ML_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


def tag_term(key: str, value: str) -> str:
    """An MLflow filter term for tag ``key`` equal to ``value``. The filter syntax has no
    escape for quotes: a value holding one (a folder named "it's") is matched with LIKE, each
    quote a one-character wildcard, so the caller must compare the runs' tags exactly."""
    if "'" not in value and '"' not in value:
        return f"tags.`{key}` = '{value}'"
    return "tags.`{}` LIKE '{}'".format(key, value.replace("'", "_").replace('"', "_"))


class Tracker:
    """MLflow runs with explicit ids. ``tasks.offline.NullTracker`` has the same interface
    and does nothing."""

    enabled = True

    def __init__(self, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> None:
        uri = tracking_uri or get_tracking_uri()
        check_server(uri)
        # Two processes creating a fresh SQLite store at once would both create its tables
        # (the client creates them when it opens the store).
        with store_lock(uri, "create"):
            self.client = MlflowClient(uri)
            self.experiment_id = self._experiment(experiment)

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if needed, marked as a model-training experiment (an
        older one without the mark gets it; a kind the user chose is kept)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG,
                                               MODEL_TRAINING)
            return found.experiment_id
        uri = self.client.tracking_uri
        location = None
        if uri.startswith(SQLITE_SCHEME):
            # Artifacts beside the database, absolute, so any working directory finds them.
            location = (local_store_path(uri).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location,
                                             tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})

    # ------------------------------------------------------------------ runs
    def start(self, name: str, parent_id: str | None = None, tags: dict | None = None) -> str:
        tags = {"mlflow.runName": name, "mlflow.source.git.commit": git_commit(), **(tags or {})}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: dict | None = None,
            existing_id: str | None = None) -> Iterator[str]:
        """A run that ends FINISHED, KILLED when interrupted (Ctrl-C, SIGTERM), or FAILED
        when the block raises. ``existing_id`` continues that run (a resumed training)."""
        if existing_id:
            self.client.update_run(existing_id, status="RUNNING")
        run_id = existing_id or self.start(name, parent_id, tags)
        try:
            yield run_id
        except BaseException as exc:
            if interrupted(exc):
                self.end(run_id, "KILLED")
            else:
                self._note_error(run_id, exc)
                self.end(run_id, "FAILED")
            raise
        self.end(run_id)

    def _note_error(self, run_id: str, exc: BaseException) -> None:
        """Tag a failing run with its error (best effort: the store may be what failed)."""
        try:
            self.client.set_tag(run_id, ERROR_TAG, f"{type(exc).__name__}: {one_line(exc)}"[:5000])
        except Exception as tag_error:  # noqa: BLE001 - the run's own error is what matters
            logger.warning("could not tag run %s with its error: %s", run_id, one_line(tag_error))

    def _runs_of(self, output_dir: str | Path, tags: dict[str, str], status: str = "") -> list:
        where = {OUTPUT_DIR_TAG: str(Path(output_dir).resolve()), **tags}
        terms = [tag_term(key, value) for key, value in where.items()]
        if status:
            terms.append(f"attributes.status = '{status}'")
        runs = self.client.search_runs([self.experiment_id], " and ".join(terms),
                                       order_by=["attributes.start_time DESC"], max_results=1000)
        return [run for run in runs  # exact: a LIKE term may match more (tag_term)
                if all(run.data.tags.get(key) == value for key, value in where.items())]

    def close_abandoned(self, output_dir: str | Path, keep: tuple = ()) -> list[str]:
        """Runs of ``output_dir`` left RUNNING by a process that died (kill -9, a lost
        machine) end as KILLED. Call it while holding OUTPUT_DIR (``reid.utils.run_lock``):
        then no live run of another process can be among them."""
        closed = []
        for run in self._runs_of(output_dir, {}, status="RUNNING"):
            if run.info.run_id in keep:
                continue
            self.client.set_tag(run.info.run_id, ABANDONED_TAG,
                                "its process ended without closing it; closed by a later run")
            self.end(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
        if closed:
            logger.info("closed %d MLflow run(s) of %s left RUNNING by a killed process",
                        len(closed), output_dir)
        return closed

    def resumable(self, output_dir: str | Path, tags: dict[str, str],
                  parent_id: str | None = None) -> Optional[str]:
        """The newest unfinished run of ``output_dir`` with ``tags`` (under ``parent_id`` when
        given): what a resumed training continues, so its loss curve stays one curve."""
        if parent_id:
            tags = {**tags, PARENT_TAG: parent_id}
        for run in self._runs_of(output_dir, tags):
            if run.info.status != "FINISHED":
                return run.info.run_id
        return None

    # ------------------------------------------------------------------ logging
    def log_config(self, run_id: str, cfg: CfgNode, config_file: str | Path | None = None) -> None:
        """The flattened config as params, the merged config as ``config.yaml``, the recipe file.

        A continued run (a resume) keeps the params it has: MLflow refuses to change one."""
        values = {key: str(value)[:6000] for key, value in cfg.flatten()}  # MLflow's limit
        logged = self.client.get_run(run_id).data.params
        params = [Param(key, value) for key, value in values.items() if key not in logged]
        changed = [key for key, value in values.items() if logged.get(key, value) != value]
        if changed:
            logger.warning("run %s keeps its logged values of %s (MLflow params cannot change); "
                           "config.yaml has this run's", run_id, ", ".join(changed))
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

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

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
