"""Sweeps: one pipeline flow run per point of a grid (``reid/sweep_grid.py``), under a parent
``reid-sweep`` flow run and a parent MLflow run ``sweep:<recipe>``.

Two modes, one flow:

- local (no ``work_pool``): the points run as pipeline flow runs inside this process, at most
  ``max_parallel`` at a time (Prefect's thread-pool task runner), against Prefect's temporary
  server or the one of PREFECT_API_URL;
- distributed (``work_pool``): each point is a run of the pipeline deployment (``deployment``,
  declared in prefect.yaml), started with ``run_deployment`` and picked up by whichever worker
  of that pool is free (``prefect worker start --pool NAME`` on any machine that sees the same
  MLflow store and data). At most ``max_parallel`` points are in flight.

Every point's pipeline run nests under the sweep's MLflow run (tags ``reid.sweep`` = its id,
``reid.sweep.point`` = the point); stages reuse earlier outputs (``tasks/stage_cache.py``), so
running a sweep that crashed again redoes only what is missing. A failed point does not stop
the others: the summary names it and its error. At the end the sweep's comparison
(``reid compare`` restricted to its runs: table as .md / .csv / .html and the figure) is logged
as artifacts of the sweep run and published as a Prefect artifact.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.states import Crashed
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import PROCESS_TAG, prefect_run_tags
from flows.pipeline import pipeline
from reid.config import load_config
from reid.errors import ReidError, one_line
from reid.sweep_grid import Point, expand
from tasks.compare import TABLE_WRITERS, compare, to_markdown
from tasks.tracking import Tracker

logger = logging.getLogger(__name__)

SWEEP_TAG = "reid.sweep"              # on each point's pipeline run: the sweep run's id
POINT_TAG = "reid.sweep.point"        # the point's name
DEFAULT_DEPLOYMENT = "reid-pipeline/sweep-point"  # prefect.yaml's pipeline deployment
POLL_S = 2.0  # how often a distributed point's flow run is looked at


@dataclass
class Outcome:
    point: str
    ok: bool
    error: str = ""
    mlflow_run_id: str = ""
    flow_run_id: str = ""


# --------------------------------------------------------------------------- one point
@task(name="sweep-point", cache_policy=NO_CACHE)
def local_point(config: str, base: list[str], point: Point, parent: str,
                use_cache: bool) -> Outcome:
    """One point as a pipeline flow run in this process; its failure is its outcome."""
    try:
        out = pipeline(config=config, overrides=[*base, *point.overrides], use_cache=use_cache,
                       parent_run_id=parent, run_tags={SWEEP_TAG: parent, POINT_TAG: point.name})
    except Exception as exc:  # noqa: BLE001 - one failed point must not stop the sweep
        return Outcome(point.name, False, one_line(exc))
    return Outcome(point.name, True, mlflow_run_id=out["mlflow_run_id"])


@task(name="sweep-point", cache_policy=NO_CACHE)
def deployed_point(deployment: str, config: str, base: list[str], point: Point, parent: str,
                   use_cache: bool, work_pool: str) -> Outcome:
    """One point as a run of the pipeline deployment, waited for; its end state is its
    outcome. A run whose process died on this machine (its worker killed) is marked Crashed
    and reported lost, instead of being waited for forever."""
    parameters = {"config": config, "overrides": [*base, *point.overrides],
                  "use_cache": use_cache, "parent_run_id": parent,
                  "run_tags": {SWEEP_TAG: parent, POINT_TAG: point.name}}
    try:
        run = run_deployment(deployment, parameters=parameters, timeout=0,
                             flow_run_name=f"sweep-point {point.name}", as_subflow=True)
    except Exception as exc:  # noqa: BLE001 - e.g. no such deployment: this point fails
        return Outcome(point.name, False, f"cannot start deployment {deployment} on work pool "
                       f"{work_pool}: {one_line(exc)}")
    return wait_for_point(run.id, point, parent)


def wait_for_point(flow_run_id, point: Point, parent: str) -> Outcome:
    tracker = Tracker()
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                break
            lost = lost_process(tracker, parent, point.name)
            if lost:
                client.set_flow_run_state(flow_run_id, Crashed(message=lost), force=True)
                return Outcome(point.name, False, f"lost: {lost}", flow_run_id=str(run.id))
            time.sleep(POLL_S)
    if not run.state.is_completed():
        return Outcome(point.name, False, f"flow run {run.name} ended {run.state.name}: "
                       f"{run.state.message or ''}".strip(), flow_run_id=str(run.id))
    return Outcome(point.name, True, flow_run_id=str(run.id))


def lost_process(tracker: Tracker, parent: str, point: str) -> Optional[str]:
    """Why the point's pipeline run is lost: it is still RUNNING in MLflow but the process
    that ran it (``reid.process`` = host:pid, on this machine) is gone; None otherwise (or when
    that process is on another machine: Prefect's own crash detection covers those)."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{SWEEP_TAG}` = '{parent}' and tags.`{POINT_TAG}` = "
        f"'{point}' and attributes.status = 'RUNNING'", max_results=5)
    for run in runs:
        host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            return (f"its flow run's process {host}:{pid} ended without finishing it (worker "
                    "killed?); run the sweep again to finish it")
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


# --------------------------------------------------------------------------- the sweep
@flow(name="reid-sweep")
def sweep(config: str, grid: str, overrides: Optional[list[str]] = None,
          work_pool: Optional[str] = None, deployment: str = DEFAULT_DEPLOYMENT,
          use_cache: bool = True) -> dict:
    """Every point of ``grid`` over ``config``: locally (the flow's task runner bounds the
    points in flight) or, with ``work_pool``, as runs of ``deployment`` on that pool."""
    base = list(overrides or [])
    points = expand(config, grid, base)  # every point's config checked before any run
    tracker = Tracker()
    tags = {"reid.flow": "sweep", "reid.sweep.grid": str(grid), **prefect_run_tags()}
    with tracker.run(f"sweep:{Path(config).stem}", tags=tags) as parent:
        tracker.log_config(parent, load_config(config, base), config)
        tracker.log_artifact(parent, grid, "sweep")
        if work_pool:
            futures = [deployed_point.submit(deployment, config, base, p, parent, use_cache,
                                             work_pool) for p in points]
        else:
            futures = [local_point.submit(config, base, p, parent, use_cache) for p in points]
        outcomes = [future.result() for future in futures]
        summary = summarize(tracker, parent, outcomes)
    return {"mlflow_run_id": parent, "outcomes": [asdict(o) for o in outcomes], **summary}


def summarize(tracker: Tracker, parent: str, outcomes: list[Outcome]) -> dict:
    """The comparison of the sweep's finished runs (artifacts of the sweep run and a Prefect
    artifact) and the failed points, with why."""
    failed = [o for o in outcomes if not o.ok]
    tracker.set_tags(parent, {"reid.sweep.points": str(len(outcomes)),
                              "reid.sweep.failed": str(len(failed))})
    lines = [f"# Sweep {parent}: {len(outcomes) - len(failed)} of {len(outcomes)} points "
             "finished", ""]
    lines += [f"- failed: `{o.point}`: {o.error}" for o in failed]
    table = None
    if len(failed) < len(outcomes):
        table = _comparison(tracker, parent, len(outcomes))
        lines += ["", to_markdown(table)]
    markdown = "\n".join(lines)
    tracker.client.log_text(parent, markdown, "sweep/summary.md")
    create_markdown_artifact(markdown, key="reid-sweep",
                             description="sweep points ranked, and the failed ones")
    return {"failed": [asdict(o) for o in failed], "markdown": markdown,
            "ranked": [] if table is None else list(table["run id"])}


def _comparison(tracker: Tracker, parent: str, count: int):
    """``reid compare`` over the sweep's pipeline runs: table files and figure logged."""
    with tempfile.TemporaryDirectory(prefix="reid-sweep-") as tmp:
        found = compare(filter_string=f"tags.`{SWEEP_TAG}` = '{parent}'", max_runs=count,
                        output=Path(tmp) / "comparison.md", track=False)
        for suffix, write in TABLE_WRITERS.items():
            write(found.table, Path(tmp) / f"comparison{suffix}")
            tracker.log_artifact(parent, Path(tmp) / f"comparison{suffix}", "sweep")
        tracker.log_artifact(parent, found.figure, "sweep")
    return found.table


def run_sweep(config: str, grid: str, overrides: Optional[list[str]] = None,
              max_parallel: int = 1, work_pool: Optional[str] = None,
              deployment: str = DEFAULT_DEPLOYMENT, use_cache: bool = True) -> dict:
    """The sweep flow with at most ``max_parallel`` points in flight."""
    if max_parallel < 1:
        raise ReidError(f"--max-parallel must be at least 1, got {max_parallel}")
    runner = ThreadPoolTaskRunner(max_workers=max_parallel)
    return sweep.with_options(task_runner=runner)(
        config=config, grid=grid, overrides=overrides, work_pool=work_pool,
        deployment=deployment, use_cache=use_cache)
