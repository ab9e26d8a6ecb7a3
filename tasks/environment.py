"""Process-wide defaults: embedded stores, no telemetry, time for Prefect's temporary server.
Run by `tasks/__init__.py` and `flows/__init__.py`, so before any module of those packages
imports prefect or mlflow."""
from __future__ import annotations

import os
from pathlib import Path

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow ignores DO_NOT_TRACK
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}
# The library's log (training progress, evaluation results) in each task run's logs on a
# Prefect server, as well as on the console; outside a run those records stay local quietly.
PREFECT_LOGS = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "reid",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}
# Prefect waits 20 s for its temporary server by default; on 2 busy cores (load average 9,
# the run at nice 19) the server took longer and `reid run` failed before its first stage.
PREFECT_STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PREFECT_SERVER = {PREFECT_STARTUP_TIMEOUT: "120"}


def default_tracking_uri(root: Path | None = None) -> str:
    """The embedded SQLite store, as an absolute URI so every stage process shares it."""
    return f"sqlite:///{(root or Path.cwd()).resolve() / 'mlflow.db'}"


def configure_environment() -> None:
    for key, value in {**TELEMETRY_OFF, **PREFECT_LOGS, **PREFECT_SERVER}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_TRACKING_URI", default_tracking_uri())


configure_environment()
