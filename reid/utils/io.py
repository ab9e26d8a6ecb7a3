"""Atomic file writes: a crash never leaves a half-written file in place of a good one."""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created like any file (0666 less the umask, so colleagues and services can read
    # checkpoints and results), not 0600 as mkstemp would; "x" still refuses to reuse a name.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    f = open(tmp, mode.replace("w", "x"))
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = _filled_the_disk(tmp, exc)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            # say which file failed
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path


# Less than this left beside a failed write means the write filled the disk.
FULL_DISK_BYTES = 1 << 20


def _filled_the_disk(tmp: Path, exc: BaseException) -> bool:
    """Whether a write failed for want of space. Writers that are not plain file I/O (torch's
    zip writer) raise a RuntimeError without errno; the space left, measured before the temp
    file is removed, tells."""
    if isinstance(exc, OSError):
        return False  # keeps its own errno (ENOSPC, EDQUOT, ...)
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        return False
    return isinstance(exc, RuntimeError) and free < FULL_DISK_BYTES


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
