"""A gallery on disk: one folder, written whole or not at all.

    DIR/manifest.json   format version, index type, metric, dimension, counts, search
                        parameters, the model card (config, weights, hashes), file sizes
    DIR/index.faiss     the faiss index (CPU form)
    DIR/vectors.npy     the float32 features (memory-mapped when loaded: exact re-scoring
                        reads only the candidates' rows)
    DIR/metadata.npz    paths, pids, camids, the removed marks and the norms, one per
                        vector id (norms: absent from folders saved before; measured then)

The folder is written beside its target (``.DIR.partial-*``) and renamed into place, so a
crash leaves the previous gallery whole. Loading checks every file against the manifest
(present, size, counts) and names the first one that does not fit.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from reid.errors import ReidError
from reid.retrieval.model_card import ModelCard
from reid.retrieval.sources import FeatureSource

FORMAT = "reid-gallery"
VERSION = 1
MANIFEST, INDEX, VECTORS, METADATA = "manifest.json", "index.faiss", "vectors.npy", "metadata.npz"
DATA_FILES = (INDEX, VECTORS, METADATA)


def save_gallery(gallery, directory: Path) -> Path:
    """Write ``gallery`` to ``directory`` atomically (an existing gallery there is replaced;
    any other non-empty folder is refused)."""
    if directory.exists() and any(directory.iterdir()) and not (directory / MANIFEST).is_file():
        raise ReidError(f"{directory} exists and is not a gallery index (no {MANIFEST}): "
                        "choose an empty or new folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.parent / f".{directory.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        faiss.write_index(gallery.cpu_index(), str(partial / INDEX))
        gallery.rows.write_vectors(partial / VECTORS)
        rows = gallery.rows
        np.savez(partial / METADATA, paths=rows.paths.astype(str), pids=rows.pids,
                 camids=rows.camids, removed=rows.removed,
                 norms=rows.all_norms())  # cosine re-scoring's, saved
        manifest = {
            "format": FORMAT, "version": VERSION, "index_type": gallery.index_type,
            "metric": gallery.metric, "dim": gallery.dim, "count": len(rows),
            "live": rows.live, "rescore": gallery.rescore,
            "search_params": gallery.search_params or "",
            "model": gallery.model.to_dict() if gallery.model is not None else None,
            "files": {name: (partial / name).stat().st_size for name in DATA_FILES},
        }
        _write_json(partial / MANIFEST, manifest)
        _fsync_dir(partial)
        _replace_dir(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return directory


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ReidError(f"gallery index {directory} does not exist (build one with "
                        "`reid index build`)")
    if not path.is_file():
        raise ReidError(f"{directory} is not a gallery index (no {MANIFEST}; build one with "
                        "`reid index build`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReidError(f"gallery index {path} is corrupt (not JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ReidError(f"{path} is not a reid gallery manifest (format {FORMAT!r} expected)")
    if manifest.get("version") != VERSION:
        raise ReidError(f"gallery index {directory} has format version "
                        f"{manifest.get('version')}; this reid reads version {VERSION}")
    for name, size in manifest["files"].items():
        actual = (directory / name).stat().st_size if (directory / name).is_file() else None
        if actual != size:
            state = "is missing" if actual is None else f"has {actual} bytes"
            raise ReidError(f"gallery index {directory} is corrupt: {name} {state}, the "
                            f"manifest says {size} bytes (rebuild the index)")
    return manifest


@dataclass
class SavedGallery:
    """What a gallery folder holds, checked against its manifest."""

    manifest: dict
    index: faiss.Index
    rows: FeatureSource
    removed: np.ndarray
    model: ModelCard | None
    norms: np.ndarray | None = None  # each row's L2 norm (folders saved before: None)


def read_gallery(directory: Path) -> SavedGallery:
    """The gallery saved in ``directory`` (``Gallery.load`` builds the object from it)."""
    manifest = read_manifest(directory)
    card = ModelCard.from_dict(manifest["model"]) if manifest.get("model") else None
    rows, removed, norms = _read_rows(directory, manifest)
    return SavedGallery(manifest, _read_index(directory / INDEX, manifest), rows, removed, card,
                        norms)


def _read_index(path: Path, manifest: dict) -> faiss.Index:
    try:
        index = faiss.read_index(str(path))
    except RuntimeError:
        raise ReidError(f"gallery index {path} is corrupt (faiss cannot read it; rebuild the "
                        "index)") from None
    if index.ntotal != manifest["count"] or index.d != manifest["dim"]:
        raise ReidError(f"gallery index {path} is corrupt: {index.ntotal} vectors of "
                        f"dimension {index.d}, the manifest says {manifest['count']} of "
                        f"{manifest['dim']}")
    return index


def _read_rows(directory: Path, manifest: dict
               ) -> tuple[FeatureSource, np.ndarray, np.ndarray | None]:
    count, dim = manifest["count"], manifest["dim"]
    try:
        vectors = np.load(directory / VECTORS, mmap_mode="r")
        with np.load(directory / METADATA, allow_pickle=False) as meta:
            arrays = {key: meta[key] for key in ("paths", "pids", "camids", "removed")}
            if "norms" in meta.files:
                arrays["norms"] = meta["norms"]
    except (ValueError, OSError, KeyError) as exc:
        raise ReidError(f"gallery index {directory} is corrupt ({exc}; rebuild the "
                        "index)") from None
    if vectors.shape != (count, dim) or any(len(a) != count for a in arrays.values()):
        raise ReidError(f"gallery index {directory} is corrupt: {VECTORS} {vectors.shape} and "
                        f"{METADATA} do not hold the manifest's {count} x {dim}")
    source = FeatureSource(vectors, arrays["paths"], arrays["pids"], arrays["camids"])
    return source, arrays["removed"].astype(bool), arrays.get("norms")


def model_embedder(card: ModelCard | None, directory: Path):
    from reid.config import load_config
    from reid.retrieval.model_card import ImageEmbedder
    if card is None:
        raise ReidError(f"gallery index {directory} was built from features without a model: "
                        "search it with features, not images")
    if not Path(card.weights).is_file():
        raise ReidError(f"the weights of gallery index {directory}, {card.weights}, are gone: "
                        "pass --config and --weights of the model it was built with")
    with tempfile.TemporaryDirectory() as tmp:  # the index folder may be read-only
        config = Path(tmp) / "config.yaml"
        config.write_text(card.config_yaml)
        cfg = load_config(config)
    return ImageEmbedder.load(cfg, card.weights)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as file:
        file.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(directory: Path) -> None:
    for name in DATA_FILES:
        with open(directory / name, "rb") as file:
            os.fsync(file.fileno())


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is moved aside first, then deleted."""
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
