"""Which model embedded a gallery, so that its queries are embedded by the same one.

A :class:`ModelCard` holds the config a gallery was built with (YAML), a fingerprint of the
keys that change what a feature means (the model's architecture and pixel statistics, the test
image size, flip averaging, the metric) and the weights file with its SHA-256. A query model
whose card differs is refused: its features live in another space, and searching with them
would return confident nonsense.

:class:`ImageEmbedder` turns query image files into features with that model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reid.config import CfgNode
from reid.data.image_check import header_problem
from reid.errors import ReidError

# Keys that do not change the features of a trained model: where it runs, where its weights
# come from, how it was trained (the classifier's size, the losses).
IGNORED_MODEL_KEYS = ("MODEL.DEVICE", "MODEL.WEIGHTS", "MODEL.HEADS.NUM_CLASSES",
                      "MODEL.LOSSES.", "MODEL.BACKBONE.PRETRAIN", "MODEL.QUEUE_SIZE")
FEATURE_KEYS = ("INPUT.SIZE_TEST", "TEST.FLIP_ENABLED", "TEST.METRIC")
HASH_CHUNK = 1 << 20


def feature_config(cfg: CfgNode) -> dict:
    """The config keys that decide what a feature means, as ``{"A.B": value}``."""
    items = dict(cfg.flatten())
    model = {key: value for key, value in items.items() if key.startswith("MODEL.")
             and not key.startswith(IGNORED_MODEL_KEYS)}
    return {**model, **{key: items[key] for key in FEATURE_KEYS if key in items}}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """The model of a gallery: config YAML, feature fingerprint, weights path and hash."""

    config_yaml: str
    fingerprint: str
    weights: str
    weights_sha256: str

    @classmethod
    def from_config(cls, cfg: CfgNode, weights: str | Path) -> "ModelCard":
        keys = json.dumps(feature_config(cfg), sort_keys=True, default=str)
        return cls(config_yaml=cfg.dump(), fingerprint=hashlib.sha256(keys.encode()).hexdigest(),
                   weights=str(weights), weights_sha256=file_sha256(weights))

    @classmethod
    def from_dict(cls, values: dict) -> "ModelCard":
        return cls(**{key: str(values[key]) for key in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def check_matches(self, other: "ModelCard", where: str) -> None:
        """A ReidError unless ``other`` embeds like this card (same keys, same weights)."""
        if other.fingerprint != self.fingerprint:
            mine = _keys(self.config_yaml)
            theirs = _keys(other.config_yaml)
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ReidError(f"{where} was built by another model config (differs in "
                            f"{', '.join(differ[:5]) or 'its feature keys'}): query with the "
                            "config it was built with, or rebuild the index")
        if other.weights_sha256 != self.weights_sha256:
            raise ReidError(f"{where} was built with other weights ({self.weights}, sha256 "
                            f"{self.weights_sha256[:12]}; given {other.weights}, "
                            f"{other.weights_sha256[:12]}): rebuild the index with these weights")


def _keys(config_yaml: str) -> dict:
    from reid.config.node import CfgNode as Node
    import yaml
    return feature_config(Node(yaml.safe_load(config_yaml) or {}))


class ImageEmbedder:
    """Features of image files with one model (the test-time transforms of its config)."""

    def __init__(self, model: torch.nn.Module, cfg: CfgNode, card: ModelCard,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.cfg, self.card, self.device = model, cfg, card, torch.device(device)

    @classmethod
    def load(cls, cfg: CfgNode, weights: str | Path, device: str = "cpu") -> "ImageEmbedder":
        from reid.inference import build_inference_model
        model = build_inference_model(cfg, weights).to(device)
        return cls(model, cfg, ModelCard.from_config(cfg, weights), device)

    def __call__(self, paths: Sequence[str | Path]) -> np.ndarray:
        from reid.inference import folder_features
        paths = [str(Path(p).resolve()) for p in paths]
        for path in paths:
            check_image(path)
        feats, _ = folder_features(self.model, self.cfg, Path("/"), self.device, paths)
        return feats


def check_image(path: str | Path) -> None:
    """A ReidError naming ``path`` unless it is a readable image file."""
    if not Path(path).is_file():
        raise ReidError(f"query {path} does not exist (expected an image file or a folder of "
                        "images)")
    problem = header_problem(str(path))
    if problem is not None:
        raise ReidError(f"query {path} is not an image ({problem})")
