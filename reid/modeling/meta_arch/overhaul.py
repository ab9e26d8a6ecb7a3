"""Feature "overhaul" distillation (Heo et al., ICCV 2019): the pre-ReLU output of the last
backbone block, captured by a hook, and the connector from student to teacher channels."""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.losses.distillation import bn_margins


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
