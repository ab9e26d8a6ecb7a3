"""An export (``reid.export``) in its own MLflow run: the exported file as an artifact, the
onnxruntime-vs-PyTorch cosines as metrics, the data version and git commit as tags."""
from __future__ import annotations

from pathlib import Path

from reid.config import CfgNode
from reid.export import export_model
from tasks.tracking import Tracker

ARTIFACT_DIR = "export"


def export(cfg: CfgNode, weights: str | Path, output: str | Path, tracker: Tracker,
           parent_id: str | None = None, fmt: str = "onnx", **options) -> dict:
    """``reid.export.export_model`` in a run named ``export``; returns its result + the run id."""
    with tracker.run("export", parent_id, tags={"reid.stage": "export"}) as run_id:
        tracker.log_config(run_id, cfg)
        tracker.log_dataset(run_id, cfg)
        result = export_model(cfg, weights, output, fmt, **options)
        tracker.client.set_tag(run_id, "reid.export.format", result["format"])
        tracker.client.set_tag(run_id, "reid.export.exporter", result["exporter"])
        tracker.client.set_tag(run_id, "reid.export.weights", str(weights))
        tracker.log_metrics(run_id, {f"{fmt}.cosine.batch{batch}": value
                                     for batch, value in result["cosine"].items()})
        tracker.log_artifact(run_id, result["output"], ARTIFACT_DIR)
    return {**result, "mlflow_run_id": run_id}
