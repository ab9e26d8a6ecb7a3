"""Prefect's temporary server must not outlive the process that started it.

Without PREFECT_API_URL, a flow run starts a temporary Prefect server (``uvicorn`` in a child
process, ~200 MB and a port) and stops it at exit. A parent killed with SIGKILL (an OOM kill, a
lost container) cannot stop it, so it used to run on as an orphan. ``watch_temporary_server``
makes Prefect start that child through this module, which serves the same uvicorn command and
stops it as soon as its parent is gone (its parent process id changes).
"""
from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import threading
import time

from tasks.environment import PREFECT_STARTUP_TIMEOUT

POLL_S = 1.0
GRACE_S = 10.0  # after SIGTERM, how long uvicorn gets to shut down before a hard exit


class _WatchedSubprocess:
    """What prefect's server module sees as ``subprocess``: the same module, except that the
    uvicorn command is started under this module's watch of its parent."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, *rest, **kwargs):  # noqa: N802 (subprocess's name)
        if list(args[1:3]) == ["-m", "uvicorn"]:
            args = [args[0], "-m", __name__, str(os.getpid()), *args[3:]]
        return subprocess.Popen(args, *rest, **kwargs)


def watch_temporary_server() -> None:
    """Route Prefect's temporary-server start through this module; nothing when a server is
    configured (PREFECT_API_URL), as no temporary one is started then."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api import server  # the module that starts the temporary server
    if not isinstance(server.subprocess, _WatchedSubprocess):
        server.subprocess = _WatchedSubprocess()


_STARTUP_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def startup_failure(exc: BaseException) -> str | None:
    """One line for Prefect's "temporary server did not start in time" error (a RuntimeError
    with the server's whole output in it); None for any other exception."""
    if not (isinstance(exc, RuntimeError) and str(exc).startswith(_STARTUP_TIMEOUT)):
        return None
    waited = os.environ.get(PREFECT_STARTUP_TIMEOUT, "20")
    return (f"Prefect's temporary server did not answer within {waited} s (a busy machine?): "
            f"set {PREFECT_STARTUP_TIMEOUT} higher, or point PREFECT_API_URL at a running Prefect "
            "server (README, Prefect server)")


def _stop_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful shutdown
    time.sleep(GRACE_S)
    os._exit(1)


def main() -> None:
    """``python -m tasks.prefect_server PARENT_PID UVICORN_ARGS...``"""
    parent = int(sys.argv[1])
    sys.argv = ["uvicorn", *sys.argv[2:]]
    threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True).start()
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
