"""What both flows share: the Prefect side of a flow run (its tags on MLflow runs, its table
artifact) and the temporary server's watch."""
from __future__ import annotations

import os
import socket

import prefect.runtime
from prefect.artifacts import create_table_artifact

from tasks.prefect_server import watch_temporary_server

watch_temporary_server()  # a temporary Prefect server ends with this process, even on SIGKILL


WORKER_ENV = "PREFECT__WORKER_NAME"  # set by a Prefect worker for the flow runs it starts
PROCESS_TAG = "reid.process"


def prefect_run_tags() -> dict[str, str]:
    """The Prefect flow run behind an MLflow run (links the two UIs), the process running it,
    and the worker that started it when a work pool's worker did; empty outside a flow."""
    run_id = prefect.runtime.flow_run.id
    if not run_id:
        return {}
    # host:pid of the process running the flow: a sweep tells a lost point by it
    tags = {"prefect.flow_run_id": str(run_id),
            PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"}
    if os.environ.get(WORKER_ENV):
        tags["prefect.worker"] = os.environ[WORKER_ENV]
    return tags


def publish_results(rows: list[dict], key: str, description: str) -> None:
    """A Prefect table artifact: one row per (model, test set)."""
    create_table_artifact(rows, key=key, description=description)


def result_rows(model: str, results: dict) -> list[dict]:
    return [{"model": model, "test set": name, **{k: round(v, 2) for k, v in metrics.items()}}
            for name, metrics in results.items()]
