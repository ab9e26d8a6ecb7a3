"""Models for inference: a config plus a (FastReID) checkpoint -> a model in eval mode.

``load_model(config, weights)`` is the public entry point (also ``reid.load_model``); the
stages (evaluate, precise-BN, extract) use :func:`build_inference_model` with a loaded config.
Loading is strict by default: every parameter of the model must come from the checkpoint with
its shape, and the checkpoint must hold nothing the model lacks, so a checkpoint for another
architecture fails loudly instead of evaluating a half-random model. Tolerated: the
DataParallel ``module.`` prefix, ``pixel_mean`` / ``pixel_std`` (taken from the config),
BatchNorm's ``num_batches_tracked`` (older checkpoints lack it) and a missing classifier
(retrieval features do not use it).

:func:`folder_features` extracts features of every image under a folder, with the test-time
transforms of the config.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reid.config import CfgNode, load_config
from reid.engine.checkpoint import load_model_state, read_checkpoint
from reid.errors import ReidError
from reid.modeling import build_model, classifier_weight_names
from reid.utils.memory import retry_if_cuda_oom

logger = logging.getLogger(__name__)

DDP_PREFIX = "module."
# The classifier of Baseline-like models and MGN's first head: its rows are the classes.
CLASSIFIER_KEYS = ("heads.weight", "b1_head.weight")
CONFIG_BUFFERS = ("pixel_mean", "pixel_std")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
LISTED_KEYS = 6  # how many keys of each kind an error message names


# --------------------------------------------------------------------------- checkpoints
def checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state of a reid or FastReID checkpoint, without the ``module.`` prefix of a
    DataParallel model and without the pixel statistics (they come from the config)."""
    state = read_checkpoint(path)["model"]
    if state and all(key.startswith(DDP_PREFIX) for key in state):
        state = {key[len(DDP_PREFIX):]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if key not in CONFIG_BUFFERS}


def num_classes_in(state: Mapping[str, torch.Tensor]) -> int:
    """The classifier size stored in a model state (0 when it has no classifier)."""
    for key in CLASSIFIER_KEYS:
        if key in state:
            return int(state[key].shape[0])
    return 0


@dataclass
class StateReport:
    """How a checkpoint's state differs from a model's."""

    missing: list[str] = field(default_factory=list)      # in the model, not the checkpoint
    unexpected: list[str] = field(default_factory=list)   # in the checkpoint, not the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, ckpt, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        def listed(items: list[str]) -> str:
            more = len(items) - LISTED_KEYS
            return ", ".join(items[:LISTED_KEYS]) + (f" (+{more} more)" if more > 0 else "")

        parts = []
        if self.mismatched:
            parts.append("shape mismatch " + listed(
                [f"{key} (checkpoint {_shape(ckpt)}, model {_shape(own)})"
                 for key, ckpt, own in self.mismatched]))
        if self.missing:
            parts.append("missing " + listed(self.missing))
        if self.unexpected:
            parts.append("unexpected " + listed(self.unexpected))
        return "; ".join(parts)


def _shape(shape: tuple) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def compare_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateReport:
    """Missing, unexpected and shape-mismatched keys of ``state`` against ``model``.

    Not counted as missing: BatchNorm's ``num_batches_tracked`` (torch fills it in) and the
    classifier weights (unused for retrieval; logged).
    """
    own = model.state_dict()
    optional = set(classifier_weight_names(model))
    report = StateReport()
    for key, value in own.items():
        if key in state:
            if tuple(state[key].shape) != tuple(value.shape):
                report.mismatched.append((key, tuple(state[key].shape), tuple(value.shape)))
        elif key in optional:
            logger.info("the checkpoint has no classifier %s: left as initialised", key)
        elif not key.endswith("num_batches_tracked"):
            report.missing.append(key)
    report.unexpected = [key for key in state if key not in own]
    return report


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
               strict: bool = True) -> StateReport:
    """Load ``state`` into ``model``.

    Strict: any missing, unexpected or shape-mismatched key raises a ReidError naming them
    and nothing is loaded. Not strict: what fits is loaded and the rest is logged.
    """
    report = compare_state(model, state)
    if not strict:
        load_model_state(model, dict(state))
        return report
    if not report.ok:
        raise ReidError(f"checkpoint {source} does not fit the model of the config: "
                        f"{report.summary()} (check MODEL.* against the recipe the checkpoint "
                        "was trained with, or load with strict=False)")
    model.load_state_dict(state, strict=False)  # tolerated absences were checked above
    return report


# --------------------------------------------------------------------------- models
def inference_config(cfg: CfgNode, num_classes: int = 0) -> CfgNode:
    """The config of the plain model that produces ``cfg``'s retrieval features.

    A distilling student is a Baseline (the teacher only matters in training); NUM_CLASSES is
    the checkpoint's when it has a classifier, else the config's (1 when 0: an eval-only model
    still needs a classifier of some size).
    """
    cfg = cfg.clone()
    if cfg.MODEL.META_ARCHITECTURE == "Distiller":
        cfg.MODEL.META_ARCHITECTURE = "Baseline"
    cfg.MODEL.HEADS.NUM_CLASSES = num_classes or max(cfg.MODEL.HEADS.NUM_CLASSES, 1)
    return cfg.freeze()


def build_inference_model(cfg: CfgNode, weights: str | Path | None = None,
                          strict: bool = True) -> nn.Module:
    """The model of ``cfg`` with ``weights`` loaded (when given), in eval mode, on the CPU."""
    if weights is None:
        return build_model(inference_config(cfg)).eval()
    state = checkpoint_state(weights)
    cfg = inference_config(cfg, num_classes_in(state)).clone()
    cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint replaces ImageNet weights
    model = build_model(cfg.freeze())
    load_state(model, state, str(weights), strict=strict)
    logger.info("loaded %s", weights)
    return model.eval()


def load_model(config_path: str | Path, weights_path: str | Path | None = None,
               overrides: Sequence[str] = (), *, strict: bool = True) -> nn.Module:
    """A re-id model ready for feature extraction.

    Builds the model of the YAML recipe ``config_path`` (``overrides``: ``KEY VALUE`` pairs),
    loads ``weights_path`` (default: MODEL.WEIGHTS when set) and returns it in eval mode on the
    CPU. ``model(images)`` takes an ``N x 3 x H x W`` float tensor of RGB values in 0..255 (the
    model normalises with MODEL.PIXEL_MEAN/STD) at INPUT.SIZE_TEST and returns ``N x D``
    features. ``strict`` (default): a checkpoint that does not fit raises a ReidError naming
    the keys.
    """
    cfg = load_config(config_path, overrides)
    weights = weights_path or cfg.MODEL.WEIGHTS or None
    return build_inference_model(cfg, weights, strict=strict)


# --------------------------------------------------------------------------- image folders
def list_images(folder: str | Path) -> list[str]:
    """Paths (relative to ``folder``, ``/``-separated, sorted) of every image under it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReidError(f"input folder {folder} does not exist (expected a folder of "
                        f"{', '.join(IMAGE_EXTENSIONS)} images)")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ReidError(f"no images under {folder} (expected {', '.join(IMAGE_EXTENSIONS)} "
                        "files, searched recursively)")
    return paths


def folder_loader(cfg: CfgNode, folder: Path, paths: Sequence[str]) -> DataLoader:
    """Test-time batches (INPUT.SIZE_TEST, TEST.IMS_PER_BATCH) of ``folder / path`` images."""
    from reid.data.build import RecordDataset, collate
    from reid.data.transforms import build_transforms

    records = [(str(folder / path), 0, 0) for path in paths]  # no identities or cameras
    return DataLoader(RecordDataset(records, build_transforms(cfg, is_train=False)),
                      batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=collate)


def folder_features(model: nn.Module, cfg: CfgNode, folder: str | Path,
                    device: torch.device | str = "cpu", paths: Sequence[str] | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """(float32 ``N x D`` features, relative paths) of ``paths`` (default: ``list_images``)
    under ``folder``; TEST.FLIP_ENABLED averages with the mirrored image, TEST.BF16 extracts
    under bfloat16 autocast."""
    from reid.evaluation.extract import extract_features

    folder = Path(folder)
    paths = list(paths) if paths is not None else list_images(folder)
    # A CUDA OOM is retried once after emptying the cache (the model stays where it is).
    feats, _, _ = retry_if_cuda_oom(extract_features, cpu_fallback=False)(
        model, folder_loader(cfg, folder, paths), device,
        flip=bool(cfg.TEST.FLIP_ENABLED), bf16=bool(cfg.TEST.BF16))
    return feats.numpy().astype(np.float32, copy=False), paths
