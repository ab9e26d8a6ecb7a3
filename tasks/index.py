"""A gallery index (``reid index build``) in its own MLflow ``index`` run: the index folder
as an artifact, its build time, size and recall against exact search as metrics; and
``models:/NAME@ALIAS`` weights fetched from the model registry for the build."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from reid.config import CfgNode
from reid.errors import ReidError
from tasks.model_registry import CONFIG_FILE, WEIGHTS_FILE
from tasks.offline import output_dir_tags
from tasks.tracking import PARENT_RUN_ENV, Tracker

ARTIFACT_DIR = "index"
RUN_NAME = "index"  # not a pipeline stage: no stage-table entry, no DVC stage


def log_index(args: argparse.Namespace, cfg: CfgNode, result: dict) -> str:
    """Log a built index in an ``index`` run (nested under REID_PARENT_RUN_ID when set)."""
    tracker = Tracker()
    tags = {"reid.stage": RUN_NAME, **output_dir_tags(cfg),
            "reid.index.type": result["index_type"], "reid.index.metric": result["metric"],
            "reid.index.count": str(result["count"]),
            "reid.index.source": str(args.input or args.dataset or args.features)}
    with tracker.run(RUN_NAME, os.environ.get(PARENT_RUN_ENV) or None, tags=tags) as run_id:
        tracker.log_config(run_id, cfg)
        tracker.log_metrics(run_id, result["metrics"])
        for path in sorted(Path(result["index"]).iterdir()):
            tracker.log_artifact(run_id, path, ARTIFACT_DIR)
    return run_id


def registered_weights(uri: str, output: Path) -> tuple[str, str]:
    """``(config, weights)`` of a registered version (``models:/NAME@ALIAS``), downloaded
    beside the index folder (``<output>.model/``): the index's model card points there."""
    target = output.parent / f"{output.name}.model"
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(target)))
    except MlflowException as exc:
        raise ReidError(f"cannot fetch {uri} from the model registry "
                        f"({str(exc).splitlines()[0]})") from None
    return str(local / CONFIG_FILE), str(local / WEIGHTS_FILE)
