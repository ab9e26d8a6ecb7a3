"""Saving and loading checkpoints: ``{"model", "optimizer", "scheduler", "epoch", ...}``.

Files are written atomically (temp file + rename) by rank 0 only, so a crash or a full disk
never leaves a truncated checkpoint in place of a good one. A FastReID checkpoint
(``{"model": state_dict}`` with FastReID parameter names) loads; tensors whose shape differs
from the model's (a classifier trained on another set) are skipped with a warning. Resuming is
strict instead: a checkpoint whose model is not exactly this config's is refused.
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


def has_training_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a training checkpoint to resume from."""
    return (Path(directory) / LAST_CHECKPOINT).is_file()


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

    def save_weights(self, name: str, **data: Any) -> Path:
        """Write ``save_dir/name.pth`` with the model's weights and ``data`` only (no optimizer
        state: a file to serve or evaluate), rank 0 only; return its path."""
        path = self.path_of(name)
        if comm.is_main_process():
            atomic_torch_save({"model": unwrap_model(self.model).state_dict(), **data}, path)
            logger.info("saved weights %s", path)
        return path

    def delete(self, name: str) -> None:
        """Remove ``save_dir/name`` (rank 0; never the file ``last_checkpoint`` names)."""
        path = self.path_of(name)
        if comm.is_main_process() and path != self.last_checkpoint():
            path.unlink(missing_ok=True)
            logger.info("deleted old checkpoint %s", path)

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
        """The epoch to start from after loading (``resume_state``'s, or 0)."""
        return int(self.resume_state(path, resume).get("epoch", 0))

    def resume_state(self, path: str | os.PathLike | None, resume: bool) -> dict:
        """With ``resume``: model, optimizer, scheduler and extras from the checkpoint that
        ``save_dir/last_checkpoint`` names, strictly; returns its other entries (epoch,
        iteration, trainer). Otherwise the model weights of ``path`` (when given) and ``{}``.
        A ``resume`` with nothing saved is a ReidError.
        """
        if not resume:
            if path:
                self.load(path)
            return {}
        last = self.last_checkpoint()
        if last is None:
            raise ReidError(f"--resume: no checkpoint to resume from in {self.save_dir} (no "
                            f"{LAST_CHECKPOINT} file); drop --resume to start training afresh")
        data = read_checkpoint(last)
        check_same_model(unwrap_model(self.model), data["model"], last)
        load_model_state(self.model, data.pop("model"))
        for name, obj in self.checkpointables.items():
            if name not in data:
                raise ReidError(f"checkpoint {last} has no {name} state to resume from (written "
                                "by another config or an older reid); start afresh")
            try:
                obj.load_state_dict(data.pop(name))
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ReidError(f"checkpoint {last} holds a {name} state this config cannot "
                                f"take ({one_line(exc)[:160]}): it was written by another "
                                "config; resume with that config or start afresh") from None
        logger.info("resuming from %s at epoch %d, iteration %d", last,
                    int(data.get("epoch", 0)) + 1, int(data.get("iteration", 0)) + 1)
        return data


def check_same_model(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """A ReidError unless ``state`` has exactly the model's keys and shapes (a resume must
    continue the same model, not load what fits)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", extra),
                                    ("other shapes for", reshaped)) if keys]
    if problems:
        raise ReidError(f"checkpoint {path} was written by another config ({'; '.join(problems)});"
                        " resume with the config that wrote it, or start afresh in another "
                        "OUTPUT_DIR")
