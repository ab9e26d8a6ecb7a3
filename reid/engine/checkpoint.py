"""Saving and loading checkpoints: ``{"model", "optimizer", "scheduler", "epoch", ...}``.

Files are written atomically (temp file + rename) by rank 0 only, so a crash or a full disk
never leaves a truncated checkpoint in place of a good one. A FastReID checkpoint
(``{"model": state_dict}`` with FastReID parameter names) loads; tensors whose shape differs
from the model's (a classifier trained on another set) are skipped with a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from reid.engine.launch import unwrap_model
from reid.errors import ReidError, one_line
from reid.utils import comm
from reid.utils.io import atomic_torch_save, atomic_write_text

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
SUFFIX = ".pth"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at ``path``; a bare state_dict is returned as ``{"model": it}``."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"checkpoint {path} does not exist (expected a .pth file written by "
                        "reid or FastReID)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        found = describe_file(path)
        detail = f" (torch: {one_line(exc)[:200]})" if "pickle" in found else ""
        raise ReidError(f"cannot read checkpoint {path}: {found}, expected a PyTorch .pth file "
                        f"written by reid or FastReID ({{'model': state_dict}}){detail}") from exc
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return data
    if isinstance(data, dict) and data and all(torch.is_tensor(v) for v in data.values()):
        return {"model": data}
    raise ReidError(f"checkpoint {path} holds no model weights (expected a dict with a "
                    "'model' state_dict)")


def describe_file(path: Path) -> str:
    """What a file that torch cannot load looks like, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive but not a complete torch checkpoint (truncated or foreign)"
    if head[:1] == b"\x80":
        return "it is a pickle that torch cannot load"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it is a binary file of {path.stat().st_size:,} bytes in an unknown format"
    return f"it is a text file (starting {text.splitlines()[0][:40]!r})"


def matching_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the tensors whose shape differs from the model's (logged)."""
    own = model.state_dict()
    kept = {}
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            logger.warning("skipping %s: checkpoint shape %s, model shape %s", key,
                           tuple(value.shape), tuple(own[key].shape))
            continue
        kept[key] = value
    return kept


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what fits; log the keys the model lacks and the keys the checkpoint lacks."""
    result = unwrap_model(model).load_state_dict(matching_state(unwrap_model(model), state),
                                                 strict=False)
    if result.missing_keys:
        logger.warning("keys of the model not in the checkpoint (left as they are): %s",
                       ", ".join(result.missing_keys))
    if result.unexpected_keys:
        logger.warning("keys of the checkpoint the model does not have (ignored): %s",
                       ", ".join(result.unexpected_keys))


class Checkpointer:
    """Saves and loads a model with its optimizer, scheduler and any other ``**extra`` objects
    that have ``state_dict``/``load_state_dict`` (e.g. a GradScaler)."""

    def __init__(self, model: nn.Module, save_dir: str | os.PathLike | None = None,
                 optimizer: Any = None, scheduler: Any = None, **extra: Any) -> None:
        self.model = model
        self.save_dir = Path(save_dir) if save_dir is not None else None
        states = {"optimizer": optimizer, "scheduler": scheduler, **extra}
        self.checkpointables = {name: obj for name, obj in states.items() if obj is not None}

    # ------------------------------------------------------------------ saving
    def path_of(self, name: str) -> Path:
        if self.save_dir is None:
            raise ValueError("this Checkpointer has no save_dir")
        return self.save_dir / (name if name.endswith(SUFFIX) else name + SUFFIX)

    def save(self, name: str, **data: Any) -> Path:
        """Write ``save_dir/name.pth`` (rank 0 only) and return its path.

        A checkpoint saved with an ``epoch`` is a training checkpoint: it also becomes the
        one named by ``save_dir/last_checkpoint``, the point ``resume_or_load`` resumes from.
        """
        path = self.path_of(name)
        if not comm.is_main_process():
            return path
        content = {"model": unwrap_model(self.model).state_dict(),
                   **{key: obj.state_dict() for key, obj in self.checkpointables.items()},
                   **data}
        atomic_torch_save(content, path)
        if "epoch" in data:
            atomic_write_text(self.save_dir / LAST_CHECKPOINT, path.name)
        logger.info("saved checkpoint %s", path)
        return path

    # ------------------------------------------------------------------ loading
    def last_checkpoint(self) -> Optional[Path]:
        """The checkpoint named by ``save_dir/last_checkpoint``, when that file exists."""
        if self.save_dir is None:
            return None
        pointer = self.save_dir / LAST_CHECKPOINT
        if not pointer.is_file():
            return None
        return self.save_dir / pointer.read_text().strip()

    def load(self, path: str | os.PathLike, checkpointables: Iterable[str] = ()) -> dict:
        """Load the model weights of ``path`` and the states named in ``checkpointables``
        (e.g. "optimizer", "scheduler"); return the checkpoint's other entries (epoch, ...)."""
        data = read_checkpoint(path)
        logger.info("loading checkpoint %s", path)
        load_model_state(self.model, data.pop("model"))
        for name in checkpointables:
            if name not in data:
                raise ReidError(f"checkpoint {path} has no {name} state to resume from")
            self.checkpointables[name].load_state_dict(data.pop(name))
        return data

    def resume_or_load(self, path: str | os.PathLike | None, resume: bool) -> int:
        """The epoch to start from after loading.

        With ``resume`` and a ``last_checkpoint`` in save_dir: model, optimizer, scheduler
        and extras from it, and its epoch. Otherwise the model weights of ``path`` (when
        given) and epoch 0.
        """
        last = self.last_checkpoint() if resume else None
        if last is not None:
            data = self.load(last, checkpointables=self.checkpointables)
            epoch = int(data.get("epoch", 0))
            logger.info("resuming from %s at epoch %d", last, epoch)
            return epoch
        if resume:
            logger.info("nothing to resume in %s: starting from scratch", self.save_dir)
        if path:
            self.load(path)
        return 0
