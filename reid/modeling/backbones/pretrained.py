"""ImageNet weights for backbones, with no hard dependency on the network.

Order: an explicit MODEL.BACKBONE.PRETRAIN_PATH (must exist), then torchvision's file in torch's
hub cache, then a download guarded by a short socket timeout. When neither the cache nor the
network has the file, training starts from scratch with a warning: a fresh clone on an offline
machine must still run.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from reid.errors import ReidError

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 10.0
# prefixes that wrap a backbone's keys in other checkpoints (DataParallel, a FastReID model)
KEY_PREFIXES = ("module.", "backbone.")
# ImageNet classifiers of the weight files: torchvision "fc.", pycls "head.fc.", RepVGG "linear."
IMAGENET_CLASSIFIER_PREFIXES = ("fc.", "head.fc.", "linear.")


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file: a plain state dict or a checkpoint with "model" / "state_dict"."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ReidError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    for key in ("model", "state_dict", "model_state"):  # model_state: pycls (RegNet, EffNet)
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ReidError(f"weights file {path} holds a {type(data).__name__}; expected a state dict")
    return data


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the backbone's entries: strip wrapping prefixes, drop the ImageNet classifier."""
    out = {}
    for key, value in state.items():
        if key.startswith("heads."):
            continue
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith(IMAGENET_CLASSIFIER_PREFIXES):
            out[key] = value
    return out


def load_into(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        result = backbone.load_state_dict(backbone_state(state), strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ReidError(f"weights in {source} do not fit this backbone: {first}") from None
    if result.missing_keys:
        logger.warning("backbone keys not in %s (left at random init): %s",
                       source, ", ".join(result.missing_keys[:10]))
    if result.unexpected_keys:
        logger.warning("keys of %s not used by the backbone: %s",
                       source, ", ".join(result.unexpected_keys[:10]))
    logger.info("loaded backbone weights from %s", source)


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str, target: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``target``; the socket timeout keeps an offline machine from hanging."""
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def load_pretrained(backbone: nn.Module, path: str, urls: list[str],
                    fetch: Callable[[str, Path], None] | None = None) -> bool:
    """Load ImageNet weights into ``backbone``; return whether any were loaded.

    ``path`` is MODEL.BACKBONE.PRETRAIN_PATH ("" = none); ``urls`` are torchvision's files for
    this architecture, the preferred first. ``fetch(url, target)`` downloads
    (default: ``download``).
    """
    if path:
        if not Path(path).is_file():
            raise ReidError(f"MODEL.BACKBONE.PRETRAIN_PATH {path} does not exist "
                            "(expected an ImageNet weights file, or set it to '')")
        load_into(backbone, load_state_file(path), path)
        return True
    cache = hub_checkpoint_dir()
    for url in urls:
        cached = cache / Path(url).name
        if cached.is_file():
            load_into(backbone, load_state_file(cached), str(cached))
            return True
    if urls:
        target = cache / Path(urls[0]).name
        try:
            (fetch or download)(urls[0], target)
            load_into(backbone, load_state_file(target), str(target))
            return True
        except Exception as exc:  # noqa: BLE001 - no network must never stop a run
            logger.warning("ImageNet weights unavailable (%s: %s); training from scratch. "
                           "Put %s in %s or set MODEL.BACKBONE.PRETRAIN_PATH to use them.",
                           type(exc).__name__, exc, target.name, cache)
            return False
    logger.warning("no ImageNet weights known for this backbone; training from scratch")
    return False
