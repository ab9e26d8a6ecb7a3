"""Distillation teachers: the KD.* paths, frozen teachers loaded from checkpoints, and the
exponential-moving-average teacher of KD.EMA (see ``distiller.py`` for the semantics)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from reid.config import load_config
from reid.errors import ReidError
from reid.modeling.meta_arch.baseline import Baseline
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- teacher paths
def as_paths(value) -> list[str]:
    """A KD path key's value as a list: "" -> [], "a" -> ["a"], ["a", "b"] unchanged."""
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def teacher_paths(cfg, require_weights: bool = True) -> list[tuple[str, str]]:
    """``(config, weights)`` of every teacher named by KD.MODEL_CONFIG / KD.MODEL_WEIGHTS.

    Without ``require_weights`` an empty KD.MODEL_WEIGHTS gives "" for every teacher (the
    distill flow trains those teachers first).
    """
    configs, weights = as_paths(cfg.KD.MODEL_CONFIG), as_paths(cfg.KD.MODEL_WEIGHTS)
    if not configs and not weights:
        return []
    if not configs:
        raise ReidError("KD.MODEL_CONFIG is empty; set it to the teacher's config file "
                        "(one path, or a list with one per teacher)")
    if not weights and not require_weights:
        weights = [""] * len(configs)
    if not weights:
        raise ReidError("KD.MODEL_WEIGHTS is empty; set it to the teacher's checkpoint "
                        "(one path, or a list with one per KD.MODEL_CONFIG entry)")
    if len(configs) != len(weights):
        raise ReidError(f"KD.MODEL_CONFIG names {len(configs)} teacher(s) but KD.MODEL_WEIGHTS "
                        f"{len(weights)} checkpoint(s); give one checkpoint per teacher config, "
                        "in the same order")
    for key, paths in (("KD.MODEL_CONFIG", configs), ("KD.MODEL_WEIGHTS", weights)):
        for index, path in enumerate(paths, start=1):
            if not path and (require_weights or key == "KD.MODEL_CONFIG"):
                raise ReidError(f"{key} entry {index} of {len(paths)} is empty (expected a path)")
    return list(zip(configs, weights))


def paths_override(paths: list[str]) -> str:
    """The command-line override text that sets a KD path key to ``paths``: the path itself
    for one, a YAML (JSON) list for several, so the key keeps the user's spelling."""
    if len(paths) == 1 and not paths[0].lstrip().startswith(("[", "(")):
        return paths[0]
    return json.dumps(list(paths))  # also a lone path that would read as a sequence


# --------------------------------------------------------------------------- teachers
def teacher_config(cfg, path: str):
    """The teacher's config, with the student's number of classes (same training set)."""
    if not Path(path).is_file():
        raise ReidError(f"KD.MODEL_CONFIG {path} does not exist "
                        "(expected the teacher's config file)")
    teacher_cfg = load_config(path).clone()
    teacher_cfg.MODEL.HEADS.NUM_CLASSES = cfg.MODEL.HEADS.NUM_CLASSES
    # the teacher's weights come from KD.MODEL_WEIGHTS; ImageNet weights would be overwritten
    teacher_cfg.MODEL.BACKBONE.PRETRAIN = False
    return teacher_cfg.freeze()


def teacher_state(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ReidError(f"KD.MODEL_WEIGHTS {path} does not exist "
                        "(expected the teacher's checkpoint)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is the user's to fix
        raise ReidError(f"cannot read KD.MODEL_WEIGHTS {path}: "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ReidError(f"KD.MODEL_WEIGHTS {path} is not a checkpoint dict with key 'model'")
    return checkpoint["model"]


def check_classifier(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    expected = model.heads.weight.shape
    found = state.get("heads.weight")
    if found is not None and found.shape != expected:
        raise ReidError(f"teacher weights {path} classify {found.shape[0]} identities "
                        f"(heads.weight {list(found.shape)}) but the student's training set "
                        f"has {expected[0]}; "
                        "the teacher must be trained on the same training set")


def freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def build_teacher(cfg, config_path: str, weights_path: str) -> nn.Module:
    """The frozen, eval-mode teacher of ``config_path`` with the weights of ``weights_path``."""
    teacher_cfg = teacher_config(cfg, config_path)
    arch = META_ARCH_REGISTRY.get(teacher_cfg.MODEL.META_ARCHITECTURE)
    if arch is META_ARCH_REGISTRY.get("Distiller"):
        arch = Baseline  # a distilled teacher is a plain Baseline once trained
    teacher = arch(teacher_cfg)
    if not isinstance(getattr(teacher, "heads", None), nn.Module) or \
            not hasattr(teacher.heads, "class_logits"):
        raise ReidError(f"KD.MODEL_CONFIG {config_path}: a teacher must be a Baseline-like model "
                        f"(one head with class logits); {type(teacher).__name__} is not")
    state = teacher_state(weights_path)
    check_classifier(teacher, state, weights_path)
    try:
        teacher.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ReidError(f"teacher weights {weights_path} do not fit the model of "
                        f"KD.MODEL_CONFIG {config_path}: {detail}") from None
    logger.info("teacher loaded from %s (%s)", weights_path, config_path)
    return freeze(teacher)


# --------------------------------------------------------------------------- EMA teacher
def check_momentum(momentum: float) -> float:
    if not 0.0 <= momentum <= 1.0:
        raise ReidError(f"KD.EMA.MOMENTUM must be in [0, 1] (the teacher's share at each "
                        f"update); got {momentum}")
    return momentum


def build_ema_teacher(cfg) -> Baseline:
    """A Baseline of the student's own config (its weights are copied in by the caller)."""
    ema_cfg = cfg.clone()
    ema_cfg.MODEL.META_ARCHITECTURE = "Baseline"
    ema_cfg.MODEL.BACKBONE.PRETRAIN = False  # overwritten by the student's weights anyway
    return freeze(Baseline(ema_cfg.freeze()))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Every saved tensor of ``teacher`` <- m * itself + (1 - m) * the student's tensor of the
    same name (integer buffers such as BN's batch counter are copied)."""
    student_state = student.state_dict(keep_vars=True)
    for name, mine in teacher.state_dict(keep_vars=True).items():
        theirs = student_state[name].detach()
        if mine.is_floating_point():
            mine.mul_(momentum).add_(theirs.to(mine.dtype), alpha=1.0 - momentum)
        else:
            mine.copy_(theirs)


def restart_ema_after_load(model: "Distiller", incompatible_keys) -> None:
    """load_state_dict post-hook (a plain function, so the model stays picklable)."""
    model.reset_ema_teacher()
