"""The run's log file, ``OUTPUT_DIR/log.txt`` (FastReID keeps one per run too).

Every stage function writes its log there, whoever calls it: the CLI, a Prefect task (whose
process never went through the CLI's logging setup) or a notebook. Rank 0 writes ``log.txt``,
rank N > 0 its own ``log.txt.rankN`` (as FastReID's ``setup_logger``, ``reid.utils.logger``),
and a file gets one handler however many stages nest (``distill`` runs ``train``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

from reid.utils.logger import LOG_FILE, log_file_path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFile(logging.FileHandler):
    """A FileHandler that, when its file cannot be written (a full disk), says so once on
    stderr and stops, instead of printing a traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        error = sys.exc_info()[1]
        sys.stderr.write(f"reid: warning: cannot write {self.baseFilename} ({error}); "
                         "logging to the console only\n")


def process_rank() -> int:
    """This process's rank: the process group's, or RANK (set by torchrun before it exists)."""
    from reid.utils import comm  # torch: not imported by `reid --help`

    return comm.get_rank() or int(os.environ.get("RANK", "0"))


def attach_log_file(directory: str | Path) -> Optional[logging.Handler]:
    """Append the root logger's records to ``directory/log.txt`` (``log.txt.rankN`` on rank N
    > 0); returns the new handler, or None when a handler already writes that file."""
    # absolute, as FileHandler spells it; "directory" is always a folder here
    path = Path(os.path.abspath(log_file_path(Path(directory) / LOG_FILE, process_rank())))
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path
           for h in root.handlers):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = LogFile(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    return handler


@contextlib.contextmanager
def log_file(directory: str | Path) -> Iterator[None]:
    """While the block runs, the library's INFO records go to ``directory/log.txt`` as well
    (the ``reid`` logger is set to INFO for that time when nobody set its level)."""
    handler = attach_log_file(directory)
    library = logging.getLogger("reid")
    unset = library.level == logging.NOTSET
    if handler is not None and unset:
        library.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler is not None:
            if unset:
                library.setLevel(logging.NOTSET)
            logging.getLogger().removeHandler(handler)
            handler.close()
