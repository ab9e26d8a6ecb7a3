"""What every backbone builder does the same way: read DEPTH, refuse the MODEL.BACKBONE switches
it has no variant for, initialise conv / norm weights, and name the model and load its ImageNet
weights when PRETRAIN asks."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable

from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.pretrained import load_pretrained

logger = logging.getLogger(__name__)

# FastReID's ResNet switches; a backbone without such a variant refuses them all
VARIANT_SWITCHES = ("WITH_IBN", "WITH_SE", "WITH_NL")
# the norms whose scale / shift are reset to 1 / 0 (affine ones only; FrozenBN holds buffers)
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
              nn.GroupNorm)


# --- MODEL.BACKBONE.DEPTH -----------------------------------------------------------------------

def stripped(depth) -> str:
    """DEPTH as written, surrounding spaces removed (a YAML number becomes its text)."""
    return str(depth).strip()


def with_x_suffix(depth) -> str:
    """ResNet-style depths: "50" and "50x" both mean "50x"."""
    key = stripped(depth)
    return key if key.endswith("x") else f"{key}x"


def parse_depth(depth, choices: Collection[str], what: str,
                spelling: Callable[[object], str] | None = None) -> str:
    """The canonical DEPTH among ``choices``; an unknown one is the user's error.

    ``spelling`` turns the user's value into the canonical form first (``stripped``,
    ``with_x_suffix``; None: the value must be spelled exactly). ``what`` names the kind of value
    with its article, e.g. "an OSNet depth", for the one-line message.
    """
    key = spelling(depth) if spelling else depth
    if key not in choices:
        raise ReidError(f"MODEL.BACKBONE.DEPTH {depth!r} is not {what}; "
                        f"expected one of {', '.join(choices)}")
    return key


# --- the switches this backbone has no variant for ----------------------------------------------

def reject_switches(backbone_cfg, keys: Iterable[str], builder: str, why: str = "") -> None:
    """Refuse each MODEL.BACKBONE ``keys`` switch set True: silently ignoring it would train
    another model than the one asked for. ``why`` explains, e.g. that SE is built in."""
    for key in keys:
        if backbone_cfg[key]:
            reason = f" ({why})" if why else ""
            raise ReidError(f"MODEL.BACKBONE.{key} True is not supported by {builder}{reason}; "
                            "set it to False")


# --- initial weights ----------------------------------------------------------------------------

def he_normal_fan_out(weight) -> None:
    """He (Kaiming) normal init over the fan-out, ReLU gain: torchvision's and FastReID's."""
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def pycls_he_normal(weight) -> None:
    """The same distribution written as pycls does, N(0, sqrt(2 / fan_out)); its rounding of
    the standard deviation differs in the last bit, which keeps seeded weights pycls' own."""
    fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
    nn.init.normal_(weight, 0.0, math.sqrt(2.0 / fan_out))


def init_conv_norm_weights(model: nn.Module, conv_init: Callable = he_normal_fan_out,
                           zero_conv_bias: bool = True) -> None:
    """Every conv by ``conv_init`` (its bias zeroed unless ``zero_conv_bias`` is False: ResNeSt
    keeps PyTorch's default bias), every affine norm at scale 1, shift 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            conv_init(module.weight)
            if zero_conv_bias and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, NORM_TYPES) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# --- ImageNet weights ---------------------------------------------------------------------------

def torchvision_urls(name: str | None) -> list[str]:
    """torchvision's ImageNet files for its model ``name``, IMAGENET1K_V1 (FastReID's) first.

    torchvision is imported here, not at module load: building without weights stays fast.
    """
    if name is None:
        return []
    try:
        from torchvision.models import get_model_weights
        return [weights.url for weights in get_model_weights(name)]
    except Exception:  # noqa: BLE001 - torchvision missing or renamed: no known files
        logger.debug("torchvision has no weights listed for %s", name)
        return []


def finish_backbone(model: nn.Module, backbone_cfg, description: str,
                    weight_urls: Callable[[], list[str]] = list) -> nn.Module:
    """Name ``model`` for messages (e.g. "regnet 800y") and, with PRETRAIN, load its ImageNet
    weights: PRETRAIN_PATH, else ``weight_urls()`` (only called then), the preferred first."""
    model.description = description
    if backbone_cfg.PRETRAIN:
        load_pretrained(model, backbone_cfg.PRETRAIN_PATH, weight_urls())
    return model
