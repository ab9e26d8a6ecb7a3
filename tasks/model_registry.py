"""The MLflow model registry: register an evaluated checkpoint, move the ``candidate`` and
``champion`` aliases, load a registered version back as a feature extractor.

A registered version is a plain artifact directory logged under its evaluate run:
``config.yaml`` (the merged config) + ``model.pth`` (``{"model": state_dict}``). It loads through
reid's own model building (``reid.load_model``, strict), so it takes any batch size; nothing is
frozen into a graph or pickled.

Promotion rule: every registration becomes ``candidate``; it becomes ``champion`` when there is
no champion yet, or when its mAP strictly beats the champion's on the same test set and the
same data version (the evaluate run's ``reid.data.version``: the ``.dvc`` hash of
``DATASETS.ROOT`` when current, else a content hash of the images read; tasks/data_version.py).
When either version is unknown (a run without one, a champion registered before versions were
recorded), the candidate does not take the title: set the alias by hand after checking
(``MlflowClient().set_registered_model_alias(name, "champion", version)``).

Concurrent registrations (a nightly retrain and a distillation run finishing together) read
the champion, decide and move the alias under an exclusive file lock next to a local store
(SQLite or a file store), so the better one always ends as champion. MLflow servers offer no
compare-and-set on aliases: with a remote store the decision is not locked, so schedule
registrations to the same model name apart (the registry logs every decision).
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlflow.artifacts
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import reid
from reid.config import CfgNode, save_config
from reid.engine.checkpoint import read_checkpoint
from reid.errors import ReidError
from reid.utils.io import atomic_torch_save
from tasks.data_version import KINDS
from tasks.tracking import DATA_VERSION_TAG, Tracker, store_lock

logger = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
ARTIFACT_DIR = "registered_model"
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.pth"
# What Tracker.start writes on a run (Tracker.log_dataset writes DATA_VERSION_TAG).
RUN_COMMIT_TAG = "mlflow.source.git.commit"
UNKNOWN_DATA = "unknown"
# Copied onto each model version, so the promotion rule reads versions only; the data version
# keeps its run tag's name (DATA_VERSION_TAG) there.
TAG_TEST_SET = "reid.test_set"
TAG_MAP = "reid.mAP"
TAG_COMMIT = "git.commit"
TAG_WEIGHTS = "reid.weights"
TAG_SHA256 = "reid.weights.sha256"  # of the version's model.pth: what tasks/lineage.py checks


@dataclass(frozen=True)
class Standing:
    """What a version is judged on: its mAP on a test set of one data version."""
    test_set: str
    data_version: Optional[str]
    mAP: float


def is_known(data_version: Optional[str]) -> bool:
    """``dvc:<md5>`` or ``content:<md5>`` (tasks/data_version.py); anything else cannot be
    compared (an older tag held the repository's data.dvc hash whatever data was read)."""
    kind, _, digest = (data_version or "").partition(":")
    return kind in KINDS and bool(digest)


def should_promote(candidate: Standing, champion: Optional[Standing]) -> tuple[bool, str]:
    """(promote?, why): the promotion rule, kept pure so it is tested on its own."""
    if champion is None:
        return True, "there is no champion yet"
    if not is_known(candidate.data_version):
        return False, f"the candidate's data version is unknown (no {DATA_VERSION_TAG} on its run)"
    if not is_known(champion.data_version):
        return False, ("the champion's data version is unknown (registered before data "
                       "versions were recorded)")
    if candidate.test_set != champion.test_set:
        return False, (f"the candidate was evaluated on {candidate.test_set}, "
                       f"the champion on {champion.test_set}")
    if candidate.data_version != champion.data_version:
        return False, (f"the candidate's data version {candidate.data_version} differs from "
                       f"the champion's {champion.data_version}")
    if candidate.mAP > champion.mAP:
        return True, f"mAP {candidate.mAP:.2f} beats the champion's {champion.mAP:.2f}"
    return False, f"mAP {candidate.mAP:.2f} does not beat the champion's {champion.mAP:.2f}"


# --------------------------------------------------------------------------- standings
def run_standing(client: MlflowClient, run_id: str, test_set: str) -> Standing:
    """The standing an evaluate run logged: metric ``<test set>.mAP`` and its data version."""
    run = client.get_run(run_id)
    metric = f"{test_set}.mAP"
    if metric not in run.data.metrics:
        raise ReidError(f"run {run_id} has no metric {metric}: register the run of an evaluate "
                        f"stage on {test_set}")
    return Standing(test_set, run.data.tags.get(DATA_VERSION_TAG), run.data.metrics[metric])


def version_standing(version: ModelVersion) -> Standing:
    tags = version.tags
    return Standing(tags.get(TAG_TEST_SET, ""), tags.get(DATA_VERSION_TAG),
                    float(tags.get(TAG_MAP, "nan")))


def version_with_alias(client: MlflowClient, name: str, alias: str) -> Optional[ModelVersion]:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None  # MLflow answers a missing alias with one of these, by store
        raise


# --------------------------------------------------------------------------- register
def write_model_dir(cfg: CfgNode, weights: str | Path, directory: Path) -> Path:
    """``config.yaml`` + ``model.pth`` (model weights only: no optimizer state) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    save_config(cfg, directory / CONFIG_FILE)
    atomic_torch_save({"model": read_checkpoint(weights)["model"]}, directory / WEIGHTS_FILE)
    return directory


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def register(tracker: Tracker, run_id: str, name: str, cfg: CfgNode, weights: str | Path,
             test_set: Optional[str] = None) -> dict:
    """Register ``weights`` (evaluated in run ``run_id``) as a new version of model ``name``.

    The version becomes ``candidate``, and ``champion`` by the promotion rule (module doc).
    ``test_set`` defaults to the first of DATASETS.TESTS. Returns
    ``{"name", "version", "aliases", "promoted", "reason"}``.
    """
    if not name or not name.strip():
        raise ReidError("a registered model needs a name (reid eval --register NAME)")
    client = tracker.client
    standing = run_standing(client, run_id, test_set or cfg.DATASETS.TESTS[0])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model_dir(cfg, weights, Path(tmp) / ARTIFACT_DIR)
        sha256 = file_sha256(model_dir / WEIGHTS_FILE)
        client.log_artifacts(run_id, str(model_dir), ARTIFACT_DIR)
    ensure_registered_model(client, name)
    run_tags = client.get_run(run_id).data.tags
    tags = {TAG_TEST_SET: standing.test_set, TAG_MAP: repr(standing.mAP),
            DATA_VERSION_TAG: standing.data_version or UNKNOWN_DATA,
            TAG_COMMIT: run_tags.get(RUN_COMMIT_TAG, "unknown"), TAG_WEIGHTS: str(weights),
            TAG_SHA256: sha256}
    version = client.create_model_version(name, f"runs:/{run_id}/{ARTIFACT_DIR}", run_id=run_id,
                                          tags=tags).version
    with promotion_lock(client.tracking_uri, name):
        client.set_registered_model_alias(name, CANDIDATE, version)
        champion = version_with_alias(client, name, CHAMPION)
        promoted, reason = should_promote(
            standing, None if champion is None else version_standing(champion))
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
    logger.info("registered %s version %s (%s mAP %.2f): %s %s", name, version,
                standing.test_set, standing.mAP,
                "champion," if promoted else "candidate only,", reason)
    aliases = [CANDIDATE, CHAMPION] if promoted else [CANDIDATE]
    return {"name": name, "version": int(version), "aliases": aliases, "promoted": promoted,
            "reason": reason}


def promotion_lock(tracking_uri: str, name: str):
    """Exclusive for the registered model ``name`` across processes on this machine, for a
    local store on a POSIX system; a no-op for a remote store (module doc)."""
    return store_lock(tracking_uri, f"registry-{name}")


# --------------------------------------------------------------------------- load
def load_registered(name: str, alias: str = CHAMPION, tracking_uri: Optional[str] = None,
                    device: str | torch.device = "cpu") -> torch.nn.Module:
    """The version of model ``name`` that holds ``alias``, built by reid, in eval mode."""
    client = MlflowClient(tracking_uri)
    if version_with_alias(client, name, alias) is None:
        raise ReidError(f"no version of registered model {name!r} holds the alias {alias!r} "
                        f"(tracking store {client.tracking_uri})")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            f"models:/{name}@{alias}", dst_path=tmp, tracking_uri=client.tracking_uri))
        model = reid.load_model(local / CONFIG_FILE, local / WEIGHTS_FILE)
    return model.to(torch.device(device)).eval()
