"""Scheduled runs: serve the deployments of ``prefect.yaml`` from one process.

``prefect.yaml`` is the one place the deployments live (entrypoint, parameters, schedules,
description, tags). ``reid serve`` reads its ``deployments`` section and serves them with
``prefect.serve`` against the Prefect server named by PREFECT_API_URL; ``prefect deploy --all``
reads the same file to register them for a work pool instead. So the two cannot disagree.

As with ``prefect deploy``, entrypoints (and relative paths in parameters) are relative to the
working directory: run ``reid serve`` from the project root. A ``work_pool`` entry is for
``prefect deploy`` only; served deployments run in subprocesses of the serving process.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

import tasks.environment  # noqa: F401  (telemetry off, embedded MLflow store) before prefect loads
import yaml
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import MissingFlowError
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.schedules import Schedule
from prefect.settings import PREFECT_API_URL

from reid.errors import ReidError

logger = logging.getLogger(__name__)

DEFAULT_PREFECT_FILE = "prefect.yaml"
START_SERVER = ("start one with `prefect server start --host 127.0.0.1` and "
                "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
SCHEDULE_KINDS = ("cron", "interval", "rrule")
# The keys of a prefect.yaml schedule that `prefect deploy` reads and a served schedule takes.
SCHEDULE_KEYS = {*SCHEDULE_KINDS, "timezone", "anchor_date", "day_or", "active", "parameters",
                 "slug"}


# --------------------------------------------------------------------------- prefect.yaml
def read_deployments(prefect_file: str | Path = DEFAULT_PREFECT_FILE) -> list[dict]:
    """The ``deployments`` section of a prefect.yaml: mappings with a name and an entrypoint."""
    path = Path(prefect_file)
    if not path.is_file():
        raise ReidError(f"no Prefect project file {path} (expected a prefect.yaml with a "
                        "`deployments` list; run from the project root or pass --prefect-file)")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReidError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    deployments = document.get("deployments") if isinstance(document, dict) else None
    if not isinstance(deployments, list) or not deployments:
        raise ReidError(f"{path} has no `deployments` list")
    for index, entry in enumerate(deployments):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("entrypoint"):
            raise ReidError(f"{path}: deployment #{index + 1} needs a `name` and an `entrypoint` "
                            "(path/to/file.py:flow_function)")
    return deployments


def select(deployments: list[dict], only: Optional[Iterable[str]] = (),
           source: str = "prefect.yaml") -> list[dict]:
    """The deployments named in ``only`` (all of them when empty), in the file's order."""
    wanted = set(only or ())
    names = [entry["name"] for entry in deployments]
    unknown = sorted(wanted - set(names))
    if unknown:
        raise ReidError(f"no deployment named {', '.join(unknown)} in {source} "
                        f"(it has: {', '.join(names)})")
    return [entry for entry in deployments if not wanted or entry["name"] in wanted]


def _utc_datetime(value: Any, where: str) -> dt.datetime:
    """A YAML timestamp or ISO 8601 string; naive times are taken as UTC."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise ReidError(f"{where}: anchor_date {value!r} is not an ISO 8601 time") from exc
    if not isinstance(value, dt.datetime):
        raise ReidError(f"{where}: anchor_date must be a time such as 2026-01-01T02:00:00Z")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def schedule_from_config(entry: dict, where: str) -> Schedule:
    """One prefect.yaml schedule (``cron`` | ``interval`` seconds | ``rrule`` + options)."""
    if not isinstance(entry, dict):
        raise ReidError(f"{where}: a schedule is a mapping such as {{cron: '0 2 * * *'}}")
    unknown = sorted(set(entry) - SCHEDULE_KEYS)
    if unknown:
        raise ReidError(f"{where}: unknown schedule key(s) {', '.join(unknown)} "
                        f"(expected some of {', '.join(sorted(SCHEDULE_KEYS))})")
    kinds = [kind for kind in SCHEDULE_KINDS if entry.get(kind) is not None]
    if len(kinds) != 1:
        raise ReidError(f"{where}: a schedule needs exactly one of cron, interval, rrule "
                        f"(found {', '.join(kinds) or 'none'})")
    options = dict(entry)
    if "interval" in options:
        if not isinstance(options["interval"], (int, float)) or options["interval"] <= 0:
            raise ReidError(f"{where}: interval is a positive number of seconds")
        options["interval"] = dt.timedelta(seconds=options["interval"])
    if "anchor_date" in options:
        options["anchor_date"] = _utc_datetime(options["anchor_date"], where)
    options["parameters"] = options.get("parameters") or {}
    try:
        return Schedule(**options)
    except ValueError as exc:  # an invalid cron / rrule string
        raise ReidError(f"{where}: {str(exc).splitlines()[0]}") from exc


# --------------------------------------------------------------------------- deployments
def load_flow(entrypoint: str, where: str) -> Flow:
    """The flow at ``path/to/file.py:function``, the path relative to the working directory."""
    path, _, function = entrypoint.rpartition(":")
    if not path or not function:
        raise ReidError(f"{where}: entrypoint {entrypoint!r} is not path/to/file.py:flow_function")
    if not Path(path).is_file():
        raise ReidError(f"{where}: entrypoint file {path} not found under {Path.cwd()} "
                        "(run reid serve from the project root)")
    try:
        return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
    except MissingFlowError as exc:
        raise ReidError(f"{where}: {str(exc).strip()}") from exc


def check_parameters(flow: Flow, parameters: dict, where: str) -> None:
    """Names the flow does not take, or required ones no value is given for, fail here rather
    than in the first scheduled run hours later."""
    accepted = set(flow.parameters.properties)
    unknown = sorted(set(parameters) - accepted)
    if unknown:
        raise ReidError(f"{where}: flow {flow.name} has no parameter {', '.join(unknown)} "
                        f"(it takes {', '.join(sorted(accepted))})")
    missing = sorted(set(flow.parameters.required or ()) - set(parameters))
    if missing:
        raise ReidError(f"{where}: flow {flow.name} needs a value for {', '.join(missing)}")


def build_deployment(entry: dict, source: str = "prefect.yaml") -> RunnerDeployment:
    """A servable deployment from one prefect.yaml entry."""
    where = f"{source}: deployment {entry['name']}"
    flow = load_flow(entry["entrypoint"], where)
    parameters = entry.get("parameters") or {}
    schedules = [schedule_from_config(item, f"{where}, schedule #{i + 1}")
                 for i, item in enumerate(entry.get("schedules") or [])]
    # A schedule's parameters are merged over the deployment's by the server, per run.
    for run_parameters in [{**parameters, **s.parameters} for s in schedules] or [parameters]:
        check_parameters(flow, run_parameters, where)
    return flow.to_deployment(
        name=entry["name"], schedules=schedules, parameters=parameters,
        description=entry.get("description"), tags=entry.get("tags") or [],
        version=entry.get("version"))


# --------------------------------------------------------------------------- serving
def require_server() -> str:
    """PREFECT_API_URL, checked to answer: a served schedule needs a real server."""
    url = PREFECT_API_URL.value()
    if not url:
        raise ReidError(f"reid serve needs a Prefect server and PREFECT_API_URL is not set: "
                        f"{START_SERVER}")
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise ReidError(f"no Prefect server answers at PREFECT_API_URL={url} "
                        f"({type(error).__name__}): {START_SERVER}")
    return url


def serve_prefect_file(prefect_file: str | Path = DEFAULT_PREFECT_FILE,
                       only: Optional[Iterable[str]] = (),
                       limit: Optional[int] = 1) -> None:
    """Serve the (selected) deployments of ``prefect_file`` until interrupted.

    ``limit`` caps concurrent flow runs (None: no cap); the default 1 queues a weekly run
    behind a nightly one instead of training both at once on the same machine.
    """
    source = str(prefect_file)
    entries = select(read_deployments(prefect_file), only, source)
    url = require_server()
    deployments = [build_deployment(entry, source) for entry in entries]
    logger.info("serving %s against %s", ", ".join(d.name for d in deployments), url)
    # Schedules are paused when serving stops, so runs do not pile up while nothing serves them.
    serve(*deployments, limit=limit, pause_on_shutdown=True)
