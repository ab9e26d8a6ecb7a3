"""An export (``reid.export``) in its own MLflow run: the exported file as an artifact, the
onnxruntime-vs-PyTorch cosines as metrics, the data version and git commit as tags."""
from __future__ import annotations

from pathlib import Path

from reid.config import CfgNode
from reid.stage_table import Stage
from tasks.tracked import stage_run
from tasks.tracking import Tracker

ARTIFACT_DIR = "export"


def export(stage: Stage, cfg: CfgNode, tracker: Tracker, parent_id: str | None = None,
           weights: str | Path = "", output: str | Path = "", format: str = "onnx",
           exporter: str = "dynamo") -> dict:
    """The ``export`` stage (``reid.export.export_model``) in its run; returns its result +
    the run id."""
    with stage_run(tracker, parent_id, stage, cfg) as (run_id, cfg):
        tracker.log_dataset(run_id, cfg)
        result = stage.run(cfg, weights, output, format, exporter)
        tracker.set_tags(run_id, {"reid.export.format": result["format"],
                                  "reid.export.exporter": result["exporter"],
                                  "reid.export.weights": str(weights)})
        tracker.log_metrics(run_id, {f"{format}.cosine.batch{batch}": value
                                     for batch, value in result["cosine"].items()})
        tracker.log_artifact(run_id, result["output"], ARTIFACT_DIR)
    return {**result, "mlflow_run_id": run_id}
