"""Any timm model as a backbone: MODEL.BACKBONE.NAME "timm:<model name>", e.g. "timm:resnet50".

The model is created without its classifier and run through ``forward_features``:

- a feature map (NCHW, or NHWC as timm's Swin-like models return) comes back as
  ``B x C x h x w``;
- tokens (ViT-like models) go through the model's own pooling (class token or average, as the
  model is configured) and come back as ``B x C x 1 x 1``.

One probe forward at build time finds which applies and the channel count, and freezes the
parameters the forward never reaches (e.g. MobileNetV3's ``conv_head``, part of timm's
classifier head): distributed training refuses parameters that get no gradient.

timm is optional and imported only here, on first use. Weights: MODEL.BACKBONE.PRETRAIN asks
timm for its ImageNet weights (a failed download warns and trains from scratch);
MODEL.BACKBONE.PRETRAIN_PATH names a local timm weights file instead.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from reid.errors import ReidError
from reid.utils.registry import closest

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
# names timm resolves itself, outside its model list (weights fetched from the hub or a folder)
EXTERNAL_NAME_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def import_timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ReidError("timm backbones (MODEL.BACKBONE.NAME 'timm:...') need the timm package: "
                        "pip install timm (or pip install 'reid-toolbox[timm]')") from None


# How forward_features' output becomes a B x C x h x w map, by the layout the probe found.
def _nchw(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    return features


def _nhwc(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 3, 1, 2)


def _tokens(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    pooled = model.forward_head(features, pre_logits=True)
    if pooled.ndim != 2:
        raise ReidError(f"timm model {type(model).__name__} does not pool its tokens to one "
                        "vector (global_pool is off); choose another MODEL.BACKBONE.NAME")
    return pooled[:, :, None, None]


TO_MAP: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "NCHW": _nchw, "NHWC": _nhwc, "tokens": _tokens}


class TimmBackbone(nn.Module):
    """A timm model's features as a ``B x C x h x w`` map; the timm model is ``self.model``."""

    def __init__(self, model: nn.Module, layout: str, out_channels: int,
                 description: str) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.out_channels = out_channels
        self.description = description

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TO_MAP[self.layout](self.model, self.model.forward_features(x))


def feature_layout(model: nn.Module, features: torch.Tensor, name: str) -> str:
    if features.ndim == 3:
        return "tokens"
    if features.ndim == 4:
        # timm marks channels-last models (Swin, ...) with output_fmt
        return "NHWC" if str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC") else "NCHW"
    raise ReidError(f"timm model {name!r} returns {features.ndim}-d features; expected a "
                    "feature map (4-d) or tokens (3-d): choose another MODEL.BACKBONE.NAME")


def model_name(cfg) -> str:
    name = cfg.MODEL.BACKBONE.NAME[len(TIMM_PREFIX):].strip()
    if not name:
        raise ReidError("MODEL.BACKBONE.NAME 'timm:' names no model; expected e.g. "
                        "'timm:resnet50' (any name of timm.list_models())")
    return name


def check_known(timm, name: str) -> None:
    if name.startswith(EXTERNAL_NAME_PREFIXES) or timm.is_model(name):
        return
    hint = closest(name, timm.list_models())
    did_you_mean = f"; did you mean {hint!r}?" if hint else ""
    raise ReidError(f"unknown timm model {name!r} in MODEL.BACKBONE.NAME{did_you_mean} "
                    "(see timm.list_models())")


def create(timm, name: str, img_size: tuple[int, int], pretrained: bool,
           weights_file: str = "") -> nn.Module:
    """timm.create_model without classifier; models with a fixed input size (ViT-like) are
    built for ``img_size``, the others reject the argument and are built without it."""
    kwargs = {"pretrained": pretrained, "num_classes": 0}
    if weights_file:
        kwargs["pretrained_cfg_overlay"] = {"file": weights_file}
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(name, **kwargs)


def create_with_weights(timm, name: str, img_size: tuple[int, int], cfg) -> nn.Module:
    bb = cfg.MODEL.BACKBONE
    if not bb.PRETRAIN:
        return create(timm, name, img_size, pretrained=False)
    if bb.PRETRAIN_PATH:
        if not Path(bb.PRETRAIN_PATH).is_file():
            raise ReidError(f"MODEL.BACKBONE.PRETRAIN_PATH {bb.PRETRAIN_PATH} does not exist "
                            f"(expected timm weights for {name}, or set it to '')")
        try:
            return create(timm, name, img_size, pretrained=True, weights_file=bb.PRETRAIN_PATH)
        except Exception as exc:  # noqa: BLE001 - a file that does not fit is the user's to fix
            raise ReidError(f"weights in {bb.PRETRAIN_PATH} do not fit timm model {name}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    try:
        return create(timm, name, img_size, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - no network must never stop a run
        logger.warning("timm ImageNet weights for %s unavailable (%s: %s); training from "
                       "scratch. Set MODEL.BACKBONE.PRETRAIN_PATH to a local weights file to "
                       "use them.", name, type(exc).__name__, str(exc).splitlines()[0])
        return create(timm, name, img_size, pretrained=False)


def probe(model: nn.Module, img_size: tuple[int, int], name: str) -> tuple[str, int]:
    """(layout, channels) of the model's features, from one eval-mode forward + backward on a
    blank image. Leaves ``.grad`` on the parameters the forward reaches (see freeze_unreached).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            features = model.forward_features(torch.zeros(1, 3, *img_size))
            layout = feature_layout(model, features, name)
            out = TO_MAP[layout](model, features)
            out.float().sum().backward()
    except (RuntimeError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ReidError(f"timm model {name!r} cannot run on INPUT.SIZE_TRAIN {list(img_size)}: "
                        f"{type(exc).__name__}: {first}") from None
    finally:
        model.train(was_training)
    return layout, int(out.shape[1])


def freeze_unreached(model: nn.Module) -> list[str]:
    """requires_grad False for parameters the probe's backward did not reach; clear the grads."""
    unreached = []
    for param_name, param in model.named_parameters():
        if param.requires_grad and param.grad is None:
            param.requires_grad_(False)
            unreached.append(param_name)
        param.grad = None
    return unreached


def build_timm_backbone(cfg) -> TimmBackbone:
    """The backbone for MODEL.BACKBONE.NAME "timm:<model name>" (see the module docstring)."""
    name = model_name(cfg)
    timm = import_timm()
    check_known(timm, name)
    img_size = tuple(int(v) for v in cfg.INPUT.SIZE_TRAIN)
    model = create_with_weights(timm, name, img_size, cfg)
    layout, channels = probe(model, img_size, name)
    backbone = TimmBackbone(model, layout, channels, f"timm {name}")
    unreached = freeze_unreached(backbone.model)
    if unreached:
        logger.info("timm %s: %d parameters unused by the features are frozen: %s",
                    name, len(unreached), ", ".join(unreached[:5]))
    logger.info("timm backbone %s: %s features, %d channels", name, backbone.layout,
                backbone.out_channels)
    return backbone
