"""One run per OUTPUT_DIR at a time.

Two runs writing the same OUTPUT_DIR mix their checkpoints, config and metrics, and each
logs the other's files to MLflow. A run holds an exclusive ``flock`` on
``OUTPUT_DIR/.reid.lock`` while it works; a second run is refused with one line naming the
first. The kernel drops the lock when its process dies (kill -9 included), so a crashed run
never blocks the next one; that next run then removes the temporary files the crash left
behind (``reid.utils.io`` writes ``.<name>.<hex>.tmp`` and renames it into place).

Re-entrant in a process (the flow holds the lock and its stages take it again); processes a
holder launches (torchrun workers) inherit it through ``INHERITED_ENV``; under torchrun only
rank 0 takes it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked there
    fcntl = None

from reid.errors import ReidError

logger = logging.getLogger(__name__)

LOCK_FILE = ".reid.lock"
INHERITED_ENV = "REID_OUTPUT_DIR_LOCKED"  # the OUTPUT_DIR a parent process holds
# What reid.utils.io.atomic_write names its temporary files.
ATOMIC_TEMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")

_held: dict[Path, list] = {}  # directory -> [locked file descriptor, depth]
_guard = threading.Lock()


def _drop_in_forked_child() -> None:
    """A forked child (a DataLoader worker) shares the lock's open file: closing its copy
    leaves the parent's lock alone, and the lock then goes with the parent, so a resume right
    after a kill -9 is not refused while the orphaned workers notice their parent is gone."""
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_in_forked_child)


def _key(directory: str | os.PathLike) -> Path:
    return Path(os.path.abspath(directory))


def _inherited(directory: Path) -> bool:
    parent = os.environ.get(INHERITED_ENV)
    held_by_parent = parent is not None and _key(parent) == directory
    return held_by_parent or int(os.environ.get("RANK", "0")) != 0


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(lock_path: Path) -> str:
    try:
        owner = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        owner = {}
    if not owner:
        return "another run"
    return (f"another run (pid {owner.get('pid')} on {owner.get('host')}, "
            f"`{owner.get('command')}`, started {owner.get('started')})")


def remove_interrupted_writes(directory: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed run left in ``directory``."""
    removed = []
    for path in directory.iterdir():
        if ATOMIC_TEMP.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted writes in %s: %s", len(removed),
                    directory, ", ".join(p.name for p in removed))
    return removed


def _acquire(directory: Path) -> int:
    """The locked file descriptor of ``directory``'s lock file (unbuffered: a write that
    fails on a full disk fails here, naming the file, not later in a flush)."""
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ReidError(f"OUTPUT_DIR {directory} is in use by {_describe(lock_path)}; wait for "
                        "it to finish or set OUTPUT_DIR to another folder") from None
    try:  # who holds it, for the message a second run prints
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, exc.strerror, str(lock_path)) from exc
    remove_interrupted_writes(directory)
    return fd


@contextlib.contextmanager
def hold_output_dir(directory: str | os.PathLike) -> Iterator[None]:
    """Hold OUTPUT_DIR for the block (a ReidError naming the holder when another run has it)."""
    key = _key(directory)
    if fcntl is None or _inherited(key):
        yield
        return
    with _guard:
        entry = _held.get(key)
        if entry is None:
            entry = _held[key] = [_acquire(key), 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # closing the file releases the flock


def inherit_env(directory: str | os.PathLike) -> dict[str, str]:
    """Environment for a child process that works in ``directory`` while this one holds it."""
    return {INHERITED_ENV: str(_key(directory))}
