"""Weights named by MLflow, and the lineage they leave on runs.

``MODEL.WEIGHTS`` and ``KD.MODEL_WEIGHTS`` accept, besides a file path,
``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH``. Before a stage
runs (reid/ never imports MLflow), ``resolve_config`` turns each of them into a local file,
checked by sha256, and returns the tags that say where the weights came from: for the
teachers of KD.MODEL_WEIGHTS ``reid.teacher.uri``, ``.run_id``, ``.model``, ``.version`` and
``.sha256`` (several teachers: their values joined by commas, in order); for MODEL.WEIGHTS the
same under ``reid.init.``. The config itself keeps the URI (config.yaml, the MLflow params),
so the run says which alias it asked for and the tags say what that alias held.

Downloads are cached under ``REID_MODEL_CACHE`` (default ``~/.cache/reid/models``) by model
version or run: a later run reuses the file when its sha256 still matches the one recorded
at download (and the registry's, when the version carries one), and downloads it again
otherwise.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient, get_tracking_uri

from reid.config import CfgNode
from reid.errors import ReidError, one_line
from reid.modeling.meta_arch.teachers import as_paths
from tasks.model_registry import TAG_SHA256, WEIGHTS_FILE, file_sha256
from tasks.offline import LINEAGE_KEYS, config_value, model_uris
from tasks.tracking import check_server

CACHE_ENV = "REID_MODEL_CACHE"
# The prefix of the lineage tags a teacher (KD.MODEL_WEIGHTS) leaves on a run.
TEACHER_PREFIX = LINEAGE_KEYS["KD.MODEL_WEIGHTS"]
LINEAGE_FIELDS = ("uri", "run_id", "model", "version", "sha256")
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


@dataclass(frozen=True)
class ModelUri:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH``."""
    text: str
    name: str = ""
    alias: str = ""
    version: str = ""
    run_id: str = ""
    path: str = ""


@dataclass(frozen=True)
class Resolved:
    """A URI's local weights file and where it came from."""
    uri: str
    file: Path
    sha256: str
    run_id: str
    model: str = ""
    version: str = ""


def parse(text: str, key: str) -> ModelUri:
    """The parts of ``text``; a ReidError naming ``key`` when it is malformed."""
    scheme, _, rest = text.partition(":/")
    rest = rest.strip("/")
    if scheme == "models":
        name, at, alias = rest.partition("@")
        if at and name and alias and "/" not in alias:
            return ModelUri(text, name=name, alias=alias)
        name, slash, version = rest.rpartition("/")
        if slash and name and version.isdigit():
            return ModelUri(text, name=name, version=version)
    elif scheme == "runs":
        run_id, slash, path = rest.partition("/")
        if slash and run_id and path:
            return ModelUri(text, run_id=run_id, path=path)
    raise ReidError(f"{key} {text!r} is not a model URI: expected models:/NAME@ALIAS, "
                    "models:/NAME/VERSION or runs:/RUN_ID/PATH")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reid" / "models")


# --------------------------------------------------------------------------- resolving
def _model_version(client: MlflowClient, uri: ModelUri, key: str):
    """The registered version ``uri`` names, or a ReidError that says what is missing."""
    where = f"in the model registry of {client.tracking_uri}"
    try:
        client.get_registered_model(uri.name)
    except MlflowException as exc:
        if exc.error_code in MISSING:
            raise ReidError(f"{key} {uri.text}: there is no registered model {uri.name!r} "
                            f"{where}") from None
        raise
    try:
        if uri.alias:
            return client.get_model_version_by_alias(uri.name, uri.alias)
        return client.get_model_version(uri.name, uri.version)
    except MlflowException as exc:
        if exc.error_code not in MISSING:
            raise
    if uri.alias:
        raise ReidError(f"{key} {uri.text}: no version of {uri.name!r} holds the alias "
                        f"{uri.alias!r} {where} (register one, or name a version: "
                        f"models:/{uri.name}/N)")
    raise ReidError(f"{key} {uri.text}: version {uri.version} of {uri.name!r} does not exist "
                    f"(deleted?) {where}")


def _source(client: MlflowClient, uri: ModelUri, key: str) -> tuple[str, dict]:
    """(the artifact URI to download, the lineage it carries)."""
    if uri.name:
        version = _model_version(client, uri, key)
        return (f"models:/{uri.name}/{version.version}",
                {"run_id": version.run_id or "", "model": uri.name,
                 "version": str(version.version), "expected": version.tags.get(TAG_SHA256, "")})
    try:
        client.get_run(uri.run_id)
    except MlflowException as exc:
        if exc.error_code in MISSING:
            raise ReidError(f"{key} {uri.text}: there is no run {uri.run_id} in "
                            f"{client.tracking_uri}") from None
        raise
    return uri.text, {"run_id": uri.run_id, "model": "", "version": "", "expected": ""}


def _cache_dir(uri: ModelUri, lineage: dict) -> Path:
    if uri.name:
        return cache_root() / "models" / _safe(uri.name) / lineage["version"]
    return cache_root() / "runs" / _safe(uri.run_id) / _safe(uri.path)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _cached(folder: Path, expected: str) -> Optional[tuple[Path, str]]:
    """The cached weights of ``folder`` when they still hash to what was recorded."""
    recorded = folder / "sha256"
    if not recorded.is_file():
        return None
    sha = recorded.read_text().strip()
    files = [p for p in folder.iterdir() if p.name != "sha256"]
    if len(files) != 1 or (expected and sha != expected) or file_sha256(files[0]) != sha:
        return None
    return files[0], sha


def _download(client: MlflowClient, source: str, folder: Path, key: str, text: str) -> Path:
    """The weights file of ``source``, downloaded into a fresh ``folder`` (atomically: a
    half-downloaded folder is never left where a later run would take it)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(tmp), tracking_uri=client.tracking_uri))
        except (MlflowException, OSError) as exc:
            raise ReidError(f"{key} {text}: its files cannot be downloaded from "
                            f"{client.tracking_uri} (artifacts deleted?): {one_line(exc)}"
                            ) from None
        weights = local / WEIGHTS_FILE if local.is_dir() else local
        if not weights.is_file():
            raise ReidError(f"{key} {text}: expected a weights file or a folder holding "
                            f"{WEIGHTS_FILE}, found {local.name}/ without it")
        staged = Path(tempfile.mkdtemp(prefix=".staged-", dir=folder.parent))
        shutil.move(str(weights), staged / weights.name)
        (staged / "sha256").write_text(file_sha256(staged / weights.name))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staged, folder)  # a concurrent run may have done the same: same content
        return folder / weights.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(text: str, key: str, client: MlflowClient) -> Resolved:
    """The local weights file of model URI ``text`` (the value of config key ``key``)."""
    uri = parse(text, key)
    source, lineage = _source(client, uri, key)
    folder = _cache_dir(uri, lineage)
    expected = lineage.pop("expected")
    found = _cached(folder, expected) if folder.is_dir() else None
    if found is None:
        _download(client, source, folder, key, text)
        found = _cached(folder, "")
    file, sha = found
    if expected and sha != expected:
        raise ReidError(f"{key} {text}: the downloaded weights have sha256 {sha[:12]}.. but the "
                        f"registry recorded {expected[:12]}.. for that version (changed or "
                        "corrupted artifacts)")
    return Resolved(uri=text, file=file, sha256=sha, **lineage)


def lineage_tags(prefix: str, resolved: list[Resolved]) -> dict[str, str]:
    if not resolved:
        return {}
    return {f"{prefix}.{name}": ",".join(str(getattr(r, name)) for r in resolved)
            for name in LINEAGE_FIELDS}


def resolve_config(cfg: CfgNode, tracking_uri: str | None = None
                   ) -> tuple[CfgNode, dict[str, str]]:
    """``cfg`` with every model URI of LINEAGE_KEYS replaced by its local file, and the
    lineage tags; ``cfg`` itself when it names none (no MLflow call at all then). URIs are
    looked up in ``tracking_uri`` (default: MLFLOW_TRACKING_URI)."""
    found = model_uris(cfg)
    if not any(found.values()):
        return cfg, {}
    uri = tracking_uri or get_tracking_uri()
    check_server(uri)
    client = MlflowClient(uri)
    local, tags = cfg.clone(), {}
    for key, uris in filter(lambda item: item[1], found.items()):
        resolved = {text: resolve(text, key, client) for text in dict.fromkeys(uris)}
        value = config_value(cfg, key)
        files = [str(resolved[v].file) if v in resolved else v for v in as_paths(value)]
        _set(local, key, files[0] if isinstance(value, str) else files)
        tags.update(lineage_tags(LINEAGE_KEYS[key], [resolved[v] for v in uris]))
    return (local.freeze() if cfg.is_frozen() else local), tags


def _set(cfg: CfgNode, key: str, value) -> None:
    section, name = key.split(".")
    cfg[section][name] = value
