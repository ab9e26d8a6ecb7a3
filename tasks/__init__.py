"""Adapters between the reid library and the tools around it (MLflow, Prefect, DVC).

Python runs this file before any module of the package, so the process-wide defaults of
``tasks.environment`` (telemetry off, the embedded MLflow store, Prefect's log settings) are
in place before any of them imports mlflow or prefect, whatever the order of their imports.
"""
import tasks.environment  # noqa: F401
