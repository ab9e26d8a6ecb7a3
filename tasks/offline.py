"""The parts of tracking a stage needs when nothing is tracked, without importing MLflow: a
``--no-track`` stage command and every torchrun rank other than 0 run through the same adapters
(``tasks/tracked.py``) with a ``NullTracker`` and never load MLflow (1.5-2 s per process)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from reid.config import CfgNode
from reid.modeling.meta_arch.teachers import as_paths

OUTPUT_DIR_TAG = "reid.output_dir"  # where a run's files are: finds abandoned and resumed runs
# The keys whose weights may be MLflow model URIs (tasks/lineage.py), and their tag prefixes.
LINEAGE_KEYS = {"KD.MODEL_WEIGHTS": "reid.teacher", "MODEL.WEIGHTS": "reid.init"}


def output_dir_tags(cfg: CfgNode) -> dict[str, str]:
    return {OUTPUT_DIR_TAG: str(Path(cfg.OUTPUT_DIR).resolve())}


def is_uri(text: str) -> bool:
    return isinstance(text, str) and text.startswith(("models:/", "runs:/"))


def model_uris(cfg: CfgNode) -> dict[str, list[str]]:
    """The MLflow model URIs of each LINEAGE_KEYS key that a stage of ``cfg`` loads (a model
    that is not a Distiller has no teacher: the distill flow's student without KD keeps the
    KD keys); empty lists when the weights are plain files."""
    return {key: [value for value in as_paths(config_value(cfg, key)) if is_uri(value)]
            for key in LINEAGE_KEYS
            if key != "KD.MODEL_WEIGHTS" or cfg.MODEL.META_ARCHITECTURE == "Distiller"}


def config_value(cfg: CfgNode, key: str):
    section, name = key.split(".")
    return cfg[section][name]


class NullTracker:
    """The Tracker's interface, doing nothing: a ``--no-track`` stage (or a rank other than 0)
    goes through the same adapter call as a tracked one. Its run id is None."""

    enabled = False

    @contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: dict | None = None,
            existing_id: str | None = None) -> Iterator[None]:
        yield None

    def resumable(self, *args, **kwargs) -> None:
        return None

    def sink(self, run_id: None):
        return None  # the trainer's metrics then go to OUTPUT_DIR only

    def log_config(self, *args, **kwargs) -> None:
        pass

    log_dataset = log_metrics = log_results = log_artifact = set_tags = log_config
