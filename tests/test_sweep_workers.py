"""A distributed sweep: a Prefect server on 127.0.0.1 (the session's), a process work pool,
prefect.yaml's sweep-point deployment and two `prefect worker` processes running 4 tiny points."""
from __future__ import annotations

import os
import subprocess
import sys

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


def test_a_sweep_on_a_work_pool_runs_on_both_workers_and_nests_in_mlflow(
        worker_env, tiny_overrides, mlflow_uri, tmp_path):
    from flows.sweep import POINT_TAG, run_sweep
    deploy_sweep_point(worker_env)
    grid = write_file(tmp_path / "grid.yml",
                      "grid:\n  SOLVER.BASE_LR: [0.00035, 0.0035]\n  SEED: [1, 2]\n")
    overrides = tiny_overrides + ["SOLVER.MAX_EPOCH", "1", "TEST.PRECISE_BN.ENABLED", "False"]
    logs = [tmp_path / f"{name}.log" for name in WORKERS]
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
               "process", "--limit", "1"]
    with background(command + ["--name", WORKERS[0]], logs[0], worker_env), \
            background(command + ["--name", WORKERS[1]], logs[1], worker_env):
        out = run_sweep(str(RECIPE), str(grid), overrides, max_parallel=4, work_pool=POOL)
    assert not out["failed"], out["failed"]
    assert len(out["outcomes"]) == 4 and all(o["flow_run_id"] for o in out["outcomes"])

    client = MlflowClient(mlflow_uri)
    sweep = client.get_run(out["mlflow_run_id"])
    nested = client.search_runs([sweep.info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    assert sorted(r.data.tags[POINT_TAG] for r in nested) == sorted(
        o["point"] for o in out["outcomes"])
    assert all(r.info.status == "FINISHED" for r in nested)
    workers = {r.data.tags.get("prefect.worker") for r in nested}
    assert workers == set(WORKERS), (workers, tail(logs[0]), tail(logs[1]))
    # The comparison table ranks the 4 points by mAP, best first.
    ranked = sorted(nested, key=lambda r: -r.data.metrics["SyntheticMarket1501.mAP"])
    assert out["ranked"] == [r.info.run_id for r in ranked]
