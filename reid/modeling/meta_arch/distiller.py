"""Distiller: a Baseline student trained with distillation losses from frozen teachers.

Teachers (FastReID 1.4 semantics):

- ``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS``: one path each, or lists of equal length (one
  teacher per config, loaded from the checkpoint at the same position);
- ``KD.EMA.ENABLED``: one more teacher, an exponential moving average of the student itself
  (no config needed). Before each training forward it moves to
  ``m * teacher + (1 - m) * student`` (``m`` = ``KD.EMA.MOMENTUM``), the student being as the
  last optimizer step left it; float buffers (BN statistics) move the same way.

Losses added to the student's own: ``loss_kd`` = ``KD.SCALE`` x the mean over all teachers of
the ``KD.LOSS`` divergence at ``KD.TEMPERATURE``; with ``KD.OVERHAUL_SCALE`` > 0,
``loss_overhaul`` = that scale x the mean over the configured teachers (not the EMA one) of
the overhaul partial L2 between the pre-ReLU outputs of the backbones' last blocks.

Teachers are frozen, always in eval mode, and kept out of the student's modules:
``state_dict()`` and ``parameters()`` are the student's (plus the overhaul connectors, which
are trained), so a Distiller checkpoint loads into a plain Baseline for evaluation.
``.to()`` / ``.cuda()`` still move the teachers along. The EMA teacher is not saved either (as
in FastReID); whenever weights are loaded into the student (resume, MODEL.WEIGHTS) it restarts
from them, so a resumed run loses the average's history, never its starting point.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from reid.config import load_config
from reid.errors import ReidError
from reid.modeling.losses.distillation import (bn_margins, distillation_loss,
                                               overhaul_distillation)
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
    if issubclass(arch, Distiller):
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


# --------------------------------------------------------------------------- overhaul
def last_block(backbone: nn.Module, role: str) -> tuple[nn.Module, nn.Module]:
    """The last residual block of a ResNet-style backbone and the norm before its final ReLU."""
    stage = getattr(backbone, "layer4", None)
    block = stage[-1] if isinstance(stage, nn.Sequential) and len(stage) else None
    norm = next((getattr(block, name) for name in ("bn3", "bn2") if hasattr(block, name)), None)
    if not isinstance(getattr(block, "relu", None), nn.ReLU) or \
            getattr(norm, "weight", None) is None or getattr(norm, "bias", None) is None:
        raise ReidError(f"KD.OVERHAUL_SCALE > 0 needs ResNet-style backbones (layer4 blocks "
                        f"ending in an affine norm and a ReLU); the {role}'s "
                        f"{type(backbone).__name__} has none; set KD.OVERHAUL_SCALE 0")
    return block, norm


class PreReluProbe:
    """Records the input of the backbone's final ReLU (its last block's pre-activation) while
    ``recording``; the block calls its ReLU several times, the last call wins."""

    def __init__(self, backbone: nn.Module, role: str) -> None:
        block, self.norm = last_block(backbone, role)
        self.value: Optional[torch.Tensor] = None
        self.active = False
        block.relu.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple) -> None:
        if self.active:
            self.value = inputs[0].clone()  # the ReLU works in place on its input

    @contextlib.contextmanager
    def recording(self):
        self.active, self.value = True, None
        try:
            yield self
        finally:
            self.active = False

    def margins(self) -> torch.Tensor:
        return bn_margins(self.norm.weight, self.norm.bias)


def recording(probe: Optional[PreReluProbe]):
    return probe.recording() if probe is not None else contextlib.nullcontext()


def build_connector(student_channels: int, teacher_channels: int) -> nn.Module:
    """1x1 conv + BN from the student's channels to the teacher's; nothing when they agree."""
    if student_channels == teacher_channels:
        return nn.Identity()
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))  # He init, fan-out
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))


def check_same_size(student: torch.Tensor, teacher: torch.Tensor, index: int) -> None:
    if student.shape[2:] != teacher.shape[2:]:
        raise ReidError(f"overhaul distillation: the student's last feature map is "
                        f"{tuple(student.shape[2:])} but teacher {index}'s is "
                        f"{tuple(teacher.shape[2:])}; use the same MODEL.BACKBONE.LAST_STRIDE "
                        "(or set KD.OVERHAUL_SCALE 0)")


# --------------------------------------------------------------------------- the model
@META_ARCH_REGISTRY.register()
class Distiller(Baseline):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        paths = teacher_paths(cfg)
        ema_enabled = cfg.KD.EMA.ENABLED
        if not paths and not ema_enabled:
            raise ReidError("KD.MODEL_CONFIG is empty; set it to the teacher's config file "
                            "(or a list of them), or set KD.EMA.ENABLED for self-distillation")
        # held in tuples so nn.Module registers none of them: not saved, not optimised
        self._external = tuple(build_teacher(cfg, config, weights) for config, weights in paths)
        self._ema = (build_ema_teacher(cfg),) if ema_enabled else ()
        self.ema_momentum = check_momentum(cfg.KD.EMA.MOMENTUM) if ema_enabled else None
        if ema_enabled:
            self.reset_ema_teacher()
            # resume / MODEL.WEIGHTS load the student: the average restarts from there
            self.register_load_state_dict_post_hook(restart_ema_after_load)
        self.kd_loss = cfg.KD.LOSS
        self.kd_temperature = cfg.KD.TEMPERATURE
        self.kd_scale = cfg.KD.SCALE
        self.overhaul_scale = cfg.KD.OVERHAUL_SCALE
        self._student_probe: Optional[PreReluProbe] = None
        self._probes: tuple[PreReluProbe, ...] = ()  # one per configured teacher
        if self.overhaul_scale > 0:
            self._build_overhaul()

    def _build_overhaul(self) -> None:
        if not self._external:
            raise ReidError("KD.OVERHAUL_SCALE > 0 needs a teacher in KD.MODEL_CONFIG "
                            "(the KD.EMA teacher is distilled through its logits only)")
        self._student_probe = PreReluProbe(self.backbone, "student")
        self._probes = tuple(PreReluProbe(t.backbone, f"teacher {i}")
                             for i, t in enumerate(self._external, start=1))
        # trained with the student and saved with it (no parameters when channels agree)
        self.connectors = nn.ModuleList(
            build_connector(self.backbone.out_channels, teacher.backbone.out_channels)
            for teacher in self._external)

    # ------------------------------------------------------------------ teachers
    @property
    def external_teachers(self) -> tuple[nn.Module, ...]:
        """The teachers of KD.MODEL_CONFIG, in order."""
        return self._external

    @property
    def ema_teacher(self) -> Optional[nn.Module]:
        return self._ema[0] if self._ema else None

    @property
    def teachers(self) -> tuple[nn.Module, ...]:
        """Every teacher whose logits are distilled: the configured ones, then the EMA one."""
        return self._external + self._ema

    @property
    def teacher(self) -> nn.Module:
        """The first teacher (the only one in the single-teacher setting)."""
        return self.teachers[0]

    def reset_ema_teacher(self) -> None:
        """Restart the moving average from the student's current weights."""
        if self.ema_teacher is not None:
            ema_update(self.ema_teacher, self, momentum=0.0)

    def overhaul_margins(self) -> list[torch.Tensor]:
        """Per configured teacher, its per-channel margins (empty when overhaul is off)."""
        return [probe.margins() for probe in self._probes]

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half() all go through _apply: move the teachers with the student
        super()._apply(fn, *args, **kwargs)
        for teacher in self.teachers:
            teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()
        return self

    @torch.no_grad()
    def run_teacher(self, teacher: nn.Module, probe: Optional[PreReluProbe], batch):
        """The teacher's class logits and, with a probe, its last pre-ReLU feature map."""
        teacher.eval()
        with recording(probe):
            features = teacher.backbone_features(batch)
        return teacher.heads.class_logits(features), (probe.value if probe else None)

    # ------------------------------------------------------------------ training
    def forward(self, batch):
        if not self.training:
            return super().forward(batch)
        if self.ema_teacher is not None:
            # FastReID's place for the update: the student as the last optimizer step left it
            ema_update(self.ema_teacher, self, self.ema_momentum)
        targets = self.targets_of(batch)
        student_probe = self._student_probe
        with recording(student_probe):
            features = self.backbone_features(batch)
        outputs = self.heads(features, targets)
        losses = self.losses(outputs, targets)

        probes = self._probes or (None,) * len(self._external)
        external = [self.run_teacher(t, p, batch) for t, p in zip(self._external, probes)]
        ema = [self.run_teacher(t, None, batch) for t in self._ema]
        teacher_logits = [logits for logits, _ in external + ema]
        losses["loss_kd"] = self.kd_scale * self.logit_loss(outputs["pred_class_logits"],
                                                            teacher_logits)
        if self._probes:
            maps = [feature_map for _, feature_map in external]
            losses["loss_overhaul"] = self.overhaul_scale * self.overhaul_loss(
                student_probe.value, maps)
        return losses

    def logit_loss(self, student_logits: torch.Tensor,
                   teacher_logits: list[torch.Tensor]) -> torch.Tensor:
        """Mean over teachers of the KD.LOSS divergence (FastReID: sum / number of teachers)."""
        total = sum(distillation_loss(self.kd_loss, student_logits, logits, self.kd_temperature)
                    for logits in teacher_logits)
        return total / len(teacher_logits)

    def overhaul_loss(self, student_map: torch.Tensor,
                      teacher_maps: list[torch.Tensor]) -> torch.Tensor:
        """Mean over configured teachers of the partial L2 of the connected student map."""
        total = student_map.new_zeros(())
        for index, (connector, probe, teacher_map) in enumerate(
                zip(self.connectors, self._probes, teacher_maps), start=1):
            check_same_size(student_map, teacher_map, index)
            total = total + overhaul_distillation(connector(student_map), teacher_map,
                                                  probe.margins())
        return total / len(teacher_maps)
