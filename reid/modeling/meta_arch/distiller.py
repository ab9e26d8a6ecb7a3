"""Distiller: a Baseline student trained with an extra logit-distillation loss from a teacher.

The teacher (KD.MODEL_CONFIG + KD.MODEL_WEIGHTS) is frozen, always in eval mode, and kept out of
the student's modules: ``state_dict()`` and ``parameters()`` are the student's alone, so a
Distiller checkpoint loads into a plain Baseline for evaluation. ``.to()`` / ``.cuda()`` still
move the teacher along.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from reid.config import load_config
from reid.errors import ReidError
from reid.modeling.losses import distillation_loss
from reid.modeling.meta_arch.baseline import Baseline
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY

logger = logging.getLogger(__name__)


def teacher_config(cfg):
    """The teacher's config, with the student's number of classes (same training set)."""
    path = cfg.KD.MODEL_CONFIG
    if not path:
        raise ReidError("KD.MODEL_CONFIG is empty; set it to the teacher's config file")
    if not Path(path).is_file():
        raise ReidError(f"KD.MODEL_CONFIG {path} does not exist "
                        "(expected the teacher's config file)")
    teacher_cfg = load_config(path).clone()
    teacher_cfg.MODEL.HEADS.NUM_CLASSES = cfg.MODEL.HEADS.NUM_CLASSES
    # the teacher's weights come from KD.MODEL_WEIGHTS; ImageNet weights would be overwritten
    teacher_cfg.MODEL.BACKBONE.PRETRAIN = False
    return teacher_cfg.freeze()


def teacher_state(cfg) -> dict[str, torch.Tensor]:
    path = cfg.KD.MODEL_WEIGHTS
    if not path:
        raise ReidError("KD.MODEL_WEIGHTS is empty; set it to the teacher's checkpoint")
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


def build_teacher(cfg) -> nn.Module:
    teacher_cfg = teacher_config(cfg)
    arch = META_ARCH_REGISTRY.get(teacher_cfg.MODEL.META_ARCHITECTURE)
    if issubclass(arch, Distiller):
        arch = Baseline  # a distilled teacher is a plain Baseline once trained
    teacher = arch(teacher_cfg)
    state = teacher_state(cfg)
    check_classifier(teacher, state, cfg.KD.MODEL_WEIGHTS)
    try:
        teacher.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ReidError(f"teacher weights {cfg.KD.MODEL_WEIGHTS} do not fit the model of "
                        f"KD.MODEL_CONFIG {cfg.KD.MODEL_CONFIG}: {detail}") from None
    teacher.requires_grad_(False)
    logger.info("teacher loaded from %s (%s)", cfg.KD.MODEL_WEIGHTS, cfg.KD.MODEL_CONFIG)
    return teacher.eval()


@META_ARCH_REGISTRY.register()
class Distiller(Baseline):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # held in a tuple so nn.Module does not register it as a submodule
        self._teacher = (build_teacher(cfg),)
        self.kd_loss = cfg.KD.LOSS
        self.kd_temperature = cfg.KD.TEMPERATURE
        self.kd_scale = cfg.KD.SCALE

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half() all go through _apply: move the teacher with the student
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, batch) -> torch.Tensor:
        self.teacher.eval()
        features = self.teacher.backbone(self.teacher.preprocess_image(batch))
        return self.teacher.heads.class_logits(features)

    def forward(self, batch):
        if not self.training:
            return super().forward(batch)
        targets = self.targets_of(batch)
        outputs = self.heads(self.backbone(self.preprocess_image(batch)), targets)
        losses = self.losses(outputs, targets)
        kd = distillation_loss(self.kd_loss, outputs["pred_class_logits"],
                               self.teacher_logits(batch), self.kd_temperature)
        losses["loss_kd"] = kd * self.kd_scale
        return losses
