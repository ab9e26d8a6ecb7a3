"""Logging setup and rate-limited log calls (FastReID's ``fastreid.utils.logger``).

- ``setup_logger(output, distributed_rank)``: the logger ``name`` (default ``reid``) with a
  console handler on rank 0 (coloured when the console is a terminal) and a file: rank 0
  writes ``log.txt``, rank N > 0 ``log.txt.rankN``, so no two processes share a file.
- ``log_first_n``, ``log_every_n``, ``log_every_n_seconds``: a message repeated by a loop
  (every batch, every image) logged a bounded number of times.

The ``reid`` command sets up logging through ``reid.commands.setup_logging`` and
``reid.utils.logs`` (the root logger, so Prefect's and MLflow's records land in the same
places); both use the file naming and the colours defined here.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Hashable

LOG_FILE = "log.txt"
PLAIN_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
DATE_FORMAT = "%m/%d %H:%M:%S"

# ANSI colours: the prefix in green, WARNING in yellow, ERROR and CRITICAL in red.
GREEN, YELLOW, RED, RESET = "\033[32m", "\033[33m", "\033[31;1m", "\033[0m"
LEVEL_COLOURS = {logging.WARNING: YELLOW, logging.ERROR: RED, logging.CRITICAL: RED}


class ColorfulFormatter(logging.Formatter):
    """A Formatter showing the time and logger name in green and WARNING / ERROR in colour; a
    logger name starting with ``root_name`` is shortened to ``abbrev_name``."""

    def __init__(self, fmt: str = PLAIN_FORMAT, datefmt: str | None = DATE_FORMAT, *,
                 root_name: str = "", abbrev_name: str = "") -> None:
        super().__init__(fmt, datefmt)
        self.root_name = root_name + "." if root_name else ""
        self.abbrev_name = abbrev_name + "." if abbrev_name else ""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # other handlers see the original
        if self.root_name and record.name.startswith(self.root_name):
            record.name = self.abbrev_name + record.name[len(self.root_name):]
        record.name = f"{GREEN}{record.name}{RESET}"
        colour = LEVEL_COLOURS.get(record.levelno)
        if colour:
            record.levelname = f"{colour}{record.levelname}{RESET}"
        return super().format(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{GREEN}{super().formatTime(record, datefmt)}{RESET}"


def wants_colour(stream) -> bool:
    """Colour on a terminal only, and never with NO_COLOR set (https://no-color.org)."""
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def log_file_path(output: str | Path, rank: int = 0) -> Path:
    """``output`` itself when it names a ``.txt`` / ``.log`` file, else ``output/log.txt``;
    with ``.rankN`` appended for rank N > 0."""
    output = Path(output)
    path = output if output.suffix in (".txt", ".log") else output / LOG_FILE
    return path.with_name(f"{path.name}.rank{rank}") if rank > 0 else path


@functools.lru_cache(maxsize=None)  # the same call twice adds no second set of handlers
def setup_logger(output: str | None = None, distributed_rank: int = 0, *, color: bool = True,
                 name: str = "reid", abbrev_name: str | None = None) -> logging.Logger:
    """The logger ``name`` at DEBUG, not propagating, with a console handler (rank 0, INFO)
    and, when ``output`` is given, a file handler (DEBUG; see ``log_file_path``)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    abbrev = name if abbrev_name is None else abbrev_name
    if distributed_rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(ColorfulFormatter(root_name=name, abbrev_name=abbrev)
                             if color and wants_colour(sys.stdout)
                             else logging.Formatter(PLAIN_FORMAT, DATE_FORMAT))
        logger.addHandler(console)
    if output is not None:
        path = log_file_path(output, distributed_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
    return logger


# ------------------------------------------------------------------ rate-limited logging
_counts: Counter[Hashable] = Counter()
_last_time: dict[Hashable, float] = {}


def _caller() -> tuple[str, tuple[str, int, str]]:
    """(module name, (file, line, function)) of the first frame outside this module."""
    frame = sys._getframe(1)
    while frame.f_code.co_filename == __file__:
        frame = frame.f_back
    code = frame.f_code
    return frame.f_globals.get("__name__", "__main__"), (code.co_filename, frame.f_lineno,
                                                         code.co_name)


def log_first_n(lvl: int, msg: str, n: int = 1, *, name: str | None = None,
                key: str | tuple[str, ...] = "caller") -> None:
    """Log ``msg`` only the first ``n`` times. ``key`` says what counts as the same log:
    ``"caller"`` (the same line of code, whatever the message), ``"message"`` (the same text,
    from anywhere) or ``("caller", "message")`` (both the same)."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    unknown = set(keys) - {"caller", "message"}
    if not keys or unknown:
        raise ValueError(f"log_first_n key must be 'caller', 'message' or both, got {key!r}")
    module, caller = _caller()
    identity = (caller if "caller" in keys else None, msg if "message" in keys else None)
    _counts[identity] += 1
    if _counts[identity] <= n:
        logging.getLogger(name or module).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: str | None = None) -> None:
    """Log ``msg`` on the 1st, (n+1)th, (2n+1)th ... call from the same line of code."""
    module, caller = _caller()
    _counts[caller] += 1
    if n == 1 or _counts[caller] % n == 1:
        logging.getLogger(name or module).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: str | None = None) -> None:
    """Log ``msg`` at most once per ``n`` seconds from the same line of code."""
    module, caller = _caller()
    now = time.monotonic()
    last = _last_time.get(caller)
    if last is None or now - last >= n:
        logging.getLogger(name or module).log(lvl, msg)
        _last_time[caller] = now
