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
``.to()`` / ``.cuda()`` still move the teachers along. The EMA teacher is not in the student's
state_dict either (as in FastReID); whenever weights are loaded into the student (MODEL.WEIGHTS)
it restarts from them. A training checkpoint saves it beside the model (``ema_teacher``,
``reid.stages.training_extras``) and a resume loads it after the student, so a resumed run
keeps the average's history.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.losses.distillation import distillation_loss, overhaul_distillation
from reid.modeling.meta_arch.baseline import Baseline
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY
from reid.modeling.meta_arch.overhaul import (PreReluProbe, build_connector, check_same_size,
                                              recording)
from reid.modeling.meta_arch.teachers import (build_ema_teacher, build_teacher, check_momentum,
                                              ema_update, restart_ema_after_load, teacher_paths)


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
