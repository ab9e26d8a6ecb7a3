"""The one exception type for errors a user can cause (paths, configs, data).

The CLI prints its message as one line, without a traceback, and exits non-zero.
"""
import errno
import signal


class ReidError(Exception):
    """A user-caused error. The message says what was expected and where."""


def one_line(exc: BaseException) -> str:
    """Return the user-facing line of an error.

    A ReidError raised inside a DataLoader worker comes back wrapped with the worker's
    traceback in its message; the last line holds the original message.
    """
    text = str(exc).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{ReidError.__module__}.{ReidError.__qualname__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return " ".join(text.split())


USER_ERROR_PREFIX = "reid: error: "  # what a user error's one line starts with, on stderr
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# File errors only the user can fix: a retry would fail the same way.
USER_FIXABLE = DISK_FULL | {errno.EACCES, errno.EPERM, errno.EROFS}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a preempted VM, a pod eviction, Slurm's warning, ``kill``), raised where Ctrl-C
    raises KeyboardInterrupt, so both unwind the same way: runs closed, servers stopped.
    ``signum`` is the signal (SIGTERM unless said otherwise)."""

    def __init__(self, *args, signum: int = signal.SIGTERM) -> None:
        super().__init__(*args)
        self.signum = int(signum)


def raise_terminated(signum, frame) -> None:
    raise Terminated(signum=signum)


# What a stopped training prints (then where its checkpoint is), so that a launcher reading
# its workers' stderr (tasks/distributed.py) knows the stop was clean and resumable.
STOPPED_PREFIX = "reid: stopped: "


class Preempted(Terminated):
    """A training stopped by a signal after writing a checkpoint at ``iteration``
    (``reid.engine.preemption``). The command exits with ``exit_code`` = 128 + the signal."""

    def __init__(self, signum: int, iteration: int, checkpoint: str) -> None:
        self.iteration, self.checkpoint = iteration, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at iteration {iteration}; checkpoint "
                         f"{checkpoint}; --resume continues from it", signum=signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do when the disk is full."""
    where = f" ({exc.filename})" if exc.filename else ""
    text = f"{exc.strerror or one_line(exc)}{where}"
    if exc.errno in DISK_FULL:
        text += "; free some space (a training resumes from its last checkpoint with --resume)"
    elif exc.errno in USER_FIXABLE:
        text += "; check that this user may write there, or set OUTPUT_DIR elsewhere"
    return text
