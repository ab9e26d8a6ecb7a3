"""A distributed sweep: a Prefect server on 127.0.0.1 (the session's), a process work pool,
prefect.yaml's sweep-point deployment and two `prefect worker` processes running 3 tiny points;
one worker killed mid-sweep, then the same sweep again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import pytest
from mlflow.tracking import MlflowClient

import tasks.environment  # noqa: F401  (Prefect reads its logging settings when it loads)
from conftest import RECIPE, ROOT, write_file
from test_serve import background, tail

pytestmark = pytest.mark.usefixtures("one_thread")
POOL = "reid-sweep-test"
WORKERS = ("worker-a", "worker-b")


@pytest.fixture
def worker_env(prefect_server, mlflow_uri, tmp_path) -> dict:
    """What the deploy command and the workers see: the session's Prefect server, this
    test's MLflow store, quick polling, one torch thread per flow run."""
    from prefect.settings import PREFECT_API_URL
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "MLFLOW_TRACKING_URI": mlflow_uri, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "OMP_NUM_THREADS": "1"}
    return env


def deploy_sweep_point(env: dict) -> None:
    """The process pool and prefect.yaml's sweep-point deployment, as a user would make them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                           "sweep-point", "--pool", POOL], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def start_worker(stack: ExitStack, env: dict, tmp_path, name: str, round_: int):
    """A worker (one flow run at a time), stopped when ``stack`` closes."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
               "process", "--limit", "1", "--name", name]
    return stack.enter_context(background(command, tmp_path / f"{name}-{round_}.log", env))


def kill_the_first_busy_worker(workers: dict, client: MlflowClient, killed: list,
                               replace) -> None:
    """Lose a machine mid-sweep: as soon as a worker's point has its pipeline run RUNNING in
    MLflow, SIGKILL that worker's process group and the flow run's process; then
    ``replace(name)`` starts a new worker of that name (the machine comes back)."""
    from flows.common import PROCESS_TAG
    from flows.sweep import POINT_TAG
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = client.search_runs(experiments, "attributes.status = 'RUNNING'") \
            if experiments else []
        for run in running:
            worker = run.data.tags.get("prefect.worker")
            if worker in workers and POINT_TAG in run.data.tags:
                os.killpg(workers[worker].pid, signal.SIGKILL)
                pid = int(run.data.tags[PROCESS_TAG].rpartition(":")[2])
                try:
                    os.kill(pid, signal.SIGKILL)  # in case it runs in a session of its own
                except ProcessLookupError:
                    pass
                killed.append((worker, run.data.tags[POINT_TAG]))
                replace(worker)
                return
        time.sleep(0.2)


def test_a_sweep_on_a_work_pool_survives_a_killed_worker_and_a_rerun_finishes_it(
        worker_env, tiny_overrides, mlflow_uri, tmp_path):
    from flows.sweep import POINT_TAG, run_sweep
    from tasks.stage_cache import REUSED_TAG
    deploy_sweep_point(worker_env)
    grid = write_file(tmp_path / "grid.yml",
                      "grid:\n  SEED: [1, 2, 3]\n")
    overrides = tiny_overrides + ["SOLVER.MAX_EPOCH", "1", "TEST.PRECISE_BN.ENABLED", "False"]
    client = MlflowClient(mlflow_uri)

    with ExitStack() as stack:
        # One worker dies with its point in flight (and is replaced, as a restarted machine
        # would be): the sweep reports exactly that point lost.
        workers = {name: start_worker(stack, worker_env, tmp_path, name, 1) for name in WORKERS}
        killed: list = []
        # The main thread is inside run_sweep, away from ``stack``, while the killer adds to it.
        replace = lambda name: start_worker(stack, worker_env, tmp_path, name, 2)  # noqa: E731
        killer = threading.Thread(target=kill_the_first_busy_worker,
                                  args=(workers, client, killed, replace))
        killer.start()
        first = run_sweep(str(RECIPE), str(grid), overrides, max_parallel=3, work_pool=POOL)
        killer.join()
        assert len(killed) == 1, "no worker ever had a point running"
        (worker, lost_point), = killed
        assert [(o["point"], o["error"][:6]) for o in first["failed"]] == [
            (lost_point, "lost: ")]
        assert "run the sweep again to finish it" in first["failed"][0]["error"]
        assert len(first["ranked"]) == 2  # the other points finished

        # The same sweep again finishes every point, reusing the finished points' training.
        out = run_sweep(str(RECIPE), str(grid), overrides, max_parallel=3, work_pool=POOL)
    assert not out["failed"], out["failed"]
    assert len(out["outcomes"]) == 3 and all(o["flow_run_id"] for o in out["outcomes"])
    sweep = client.get_run(out["mlflow_run_id"])
    experiment = sweep.info.experiment_id
    nested = client.search_runs([experiment],
                                f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    assert sorted(r.data.tags[POINT_TAG] for r in nested) == sorted(
        o["point"] for o in out["outcomes"])
    assert all(r.info.status == "FINISHED" for r in nested)
    workers_used = {r.data.tags.get("prefect.worker") for r in nested}
    assert workers_used == set(WORKERS), (workers_used, *map(tail, tmp_path.glob("worker-*.log")))
    for run in nested:
        train, = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = "
                                    f"'{run.info.run_id}' and attributes.run_name = 'train'")
        reused = REUSED_TAG in train.data.tags
        assert reused == (run.data.tags[POINT_TAG] != lost_point), run.data.tags[POINT_TAG]
    # The comparison table ranks the 3 points by mAP, best first.
    mAP = {r.info.run_id: r.data.metrics["SyntheticMarket1501.mAP"] for r in nested}
    assert sorted(out["ranked"]) == sorted(mAP)  # (points may tie on mAP: compare values)
    assert [mAP[run] for run in out["ranked"]] == sorted(mAP.values(), reverse=True)
