"""Scheduled runs: prefect.yaml -> `reid serve` -> a real Prefect server on loopback -> MLflow."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import RECIPE, ROOT, free_port
from reid.cli import main
from reid.errors import ReidError

STAGES = {"prepare", "train", "precise_bn", "evaluate"}
RUN_TIMEOUT_S = 150
SERVER_START_TIMEOUT_S = 90


def git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()


def write_prefect_file(path: Path, deployments: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": "test", "deployments": deployments}))
    return path


# --------------------------------------------------------------------------- prefect.yaml
def test_repo_prefect_yaml_serves_a_nightly_retrain_and_a_weekly_kd_refresh(monkeypatch):
    from flows.serve import build_deployment, read_deployments
    monkeypatch.chdir(ROOT)
    built = {d.name: d for d in map(build_deployment, read_deployments(ROOT / "prefect.yaml"))}

    assert set(built) == {"nightly-retrain", "weekly-kd-refresh", "sweep-point"}
    assert built["sweep-point"].entrypoint == "flows/pipeline.py:pipeline"
    assert not built["sweep-point"].schedules  # started by `reid sweep --work-pool` only
    nightly, weekly = built["nightly-retrain"], built["weekly-kd-refresh"]
    assert nightly.flow_name == "reid-pipeline"
    assert nightly.entrypoint == "flows/pipeline.py:pipeline"
    assert weekly.flow_name == "reid-distill"
    assert weekly.entrypoint == "flows/distill.py:distill"
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [
        ("0 2 * * *", "UTC")]  # 02:00 every day
    assert [(s.schedule.cron, s.schedule.timezone) for s in weekly.schedules] == [
        ("0 5 * * 0", "UTC")]  # 05:00 on Sundays
    assert nightly.parameters["config"] == "params/synthetic.yml"
    assert weekly.parameters["config"] == "params/kd-synthetic.yml"
    assert all((ROOT / d.parameters["config"]).is_file() for d in built.values())
    # The weekly student learns from the nightly model: its teacher is the nightly recipe.
    kd = yaml.safe_load((ROOT / "params/kd-synthetic.yml").read_text())["KD"]
    assert kd["MODEL_CONFIG"] == nightly.parameters["config"]
    # ... through the registry: the champion of the model the nightly run registers, and the
    # student is registered in turn (tasks/lineage.py records which teacher it learned from).
    champion = f"models:/{nightly.parameters['register_model']}@champion"
    assert weekly.parameters["overrides"] == ["KD.MODEL_WEIGHTS", champion]
    assert weekly.parameters["register_model"] not in ("", None,
                                                       nightly.parameters["register_model"])


def test_served_schedules_equal_what_prefect_deploy_registers(monkeypatch):
    # Prefect's own reader of prefect.yaml schedules is the reference: `prefect deploy` and
    # `reid serve` must turn the same file into the same schedules.
    deploy_schedules = pytest.importorskip("prefect.cli.deploy._schedules")
    from flows.serve import build_deployment, read_deployments
    monkeypatch.chdir(ROOT)
    for entry in read_deployments(ROOT / "prefect.yaml"):
        ours = build_deployment(entry).schedules
        theirs = [deploy_schedules._schedule_config_to_deployment_schedule(s)
                  for s in entry["schedules"]]
        assert [s.schedule for s in ours] == [t["schedule"] for t in theirs]
        assert [s.parameters for s in ours] == [t.get("parameters", {}) for t in theirs]


def test_interval_schedule_with_anchor_and_parameters():
    from flows.serve import schedule_from_config
    schedule = schedule_from_config({"interval": 90, "anchor_date": "2026-11-27T10:00:00",
                                     "parameters": {"overrides": ["SOLVER.MAX_EPOCH", "1"]}},
                                    "here")
    assert schedule.interval == dt.timedelta(minutes=1, seconds=30)
    assert schedule.anchor_date == dt.datetime(2026, 11, 27, 10, tzinfo=dt.timezone.utc)
    assert schedule.parameters == {"overrides": ["SOLVER.MAX_EPOCH", "1"]}
    assert schedule.cron is None and schedule.active


@pytest.mark.parametrize("entry, message", [
    ({"cron": "0 2 * * *", "every": 3}, "unknown schedule key(s) every"),
    ({"cron": "0 2 * * *", "interval": 60},
     "exactly one of cron, interval, rrule (found cron, interval)"),
    ({"timezone": "UTC"}, "exactly one of cron, interval, rrule (found none)"),
    ({"interval": -5}, "interval is a positive number of seconds"),
    ({"cron": "every night"}, "schedule #1: Invalid cron string"),
    ({"interval": 60, "anchor_date": "tomorrow"}, "anchor_date 'tomorrow' is not an ISO 8601 time"),
])
def test_bad_schedules_are_one_line_errors(entry, message):
    from flows.serve import schedule_from_config
    with pytest.raises(ReidError) as info:
        schedule_from_config(entry, "prefect.yaml: deployment x, schedule #1")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "entrypoint": "flows/nothing.py:pipeline"},
     "deployment x: entrypoint file flows/nothing.py not found under"),
    ({"name": "x", "entrypoint": "flows/pipeline.py:no_such_flow"}, "no_such_flow"),
    ({"name": "x", "entrypoint": "flows/pipeline.py:pipeline", "parameters": {"epochs": 3}},
     "flow reid-pipeline has no parameter epochs (it takes config"),
    ({"name": "x", "entrypoint": "flows/distill.py:distill", "parameters": {"overrides": []}},
     "flow reid-distill needs a value for config"),
    ({"name": "x", "entrypoint": "flows/pipeline.py:pipeline",
      "schedules": [{"interval": 60, "parameters": {"recipe": "a.yml"}}]},
     "flow reid-pipeline has no parameter recipe"),
])
def test_bad_deployments_are_one_line_errors(monkeypatch, entry, message):
    from flows.serve import build_deployment
    monkeypatch.chdir(ROOT)
    with pytest.raises(ReidError) as info:
        build_deployment(entry, "p.yaml")
    assert message in str(info.value) and str(info.value).startswith("p.yaml: deployment x")


def test_prefect_file_errors(tmp_path):
    from flows.serve import read_deployments, select
    with pytest.raises(ReidError, match="no Prefect project file .*missing.yaml"):
        read_deployments(tmp_path / "missing.yaml")
    with pytest.raises(ReidError, match="has no `deployments` list"):
        read_deployments(write_prefect_file(tmp_path / "empty.yaml", []))
    with pytest.raises(ReidError, match="deployment #2 needs a `name` and an `entrypoint`"):
        read_deployments(write_prefect_file(tmp_path / "p.yaml", [
            {"name": "a", "entrypoint": "f.py:a"}, {"name": "b"}]))
    entries = [{"name": "a", "entrypoint": "f.py:a"}, {"name": "b", "entrypoint": "f.py:b"}]
    assert [e["name"] for e in select(entries, None)] == ["a", "b"]
    assert [e["name"] for e in select(entries, ["b"])] == ["b"]
    with pytest.raises(ReidError, match=r"no deployment named c in p.yaml \(it has: a, b\)"):
        select(entries, ["c"], "p.yaml")


def test_reid_serve_without_a_server_says_how_to_start_one(monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    monkeypatch.chdir(ROOT)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reid: error: reid serve needs a Prefect server and PREFECT_API_URL "
                          "is not set: start one with `prefect server start --host 127.0.0.1`")
    assert "\n" not in err

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: url}):
        assert main(["serve", "--only", "nightly-retrain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"reid: error: no Prefect server answers at PREFECT_API_URL={url} ")
    assert "prefect server start" in err and "\n" not in err


# --------------------------------------------------------------------------- end to end
@contextmanager
def background(command: list[str], log: Path, env: dict, cwd: Path = ROOT):
    """A process in its own process group (so its children go with it), stopped on exit:
    SIGINT (a graceful shutdown), SIGKILL to the group if it lingers."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
        except ProcessLookupError:
            pass
        proc.wait()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def prefect_env(tmp_path) -> dict:
    """Environment for the server and `reid serve`: an isolated Prefect home, no telemetry."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.fixture
def prefect_api(tmp_path, prefect_env):
    """`prefect server start` on 127.0.0.1 and a free port; yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tmp_path / "prefect-server.log"
    prefect = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port)]
    with background(prefect, log, prefect_env) as server:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"prefect server exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"prefect server not up:\n{tail(log)}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url


def wait_for_scheduled_run(client, deployment_id, serve, serve_log: Path):
    """The first flow run of the deployment, once it is final. Pauses the deployment as soon
    as a run exists, so the short test interval schedules no second one."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    only_ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    deadline, paused = time.monotonic() + RUN_TIMEOUT_S, False
    while True:
        assert serve.poll() is None, f"reid serve exited:\n{tail(serve_log)}"
        assert time.monotonic() < deadline, f"no finished scheduled run:\n{tail(serve_log)}"
        started = [run for run in client.read_flow_runs(deployment_filter=only_ours)
                   if run.state is not None and not run.state.is_scheduled()]
        if started and not paused:
            client.pause_deployment(deployment_id)  # also deletes its future scheduled runs
            paused = True
        if started and started[0].state.is_final():
            return started[0]
        time.sleep(1)


def test_reid_serve_runs_a_scheduled_pipeline_that_logs_to_mlflow(
        prefect_api, prefect_env, tiny_overrides, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from reid.config import load_config
    from tasks.data_version import data_version

    overrides = tiny_overrides + ["SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "[1]"]
    output_dir = Path(tiny_overrides[tiny_overrides.index("OUTPUT_DIR") + 1])
    prefect_file = write_prefect_file(tmp_path / "prefect.yaml", [
        {"name": "tiny-retrain", "entrypoint": "flows/pipeline.py:pipeline",
         "parameters": {"config": str(RECIPE)},
         # A schedule's own parameters are merged over the deployment's for its runs.
         "schedules": [{"interval": 5, "parameters": {"overrides": overrides}}]},
        {"name": "not-served", "entrypoint": "flows/distill.py:distill",
         "parameters": {"config": "params/kd-synthetic.yml"}, "schedules": [{"interval": 5}]},
    ])
    commit_before = git_head()
    serve_env = {**prefect_env, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": mlflow_uri,
                 "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # pick the run up soon after it is due
    serve_log = tmp_path / "reid-serve.log"
    serve_cmd = [sys.executable, "-m", "reid.cli", "serve", "--prefect-file", str(prefect_file),
                 "--only", "tiny-retrain"]
    with background(serve_cmd, serve_log, serve_env) as serve, \
            temporary_settings(updates={PREFECT_API_URL: prefect_api}), \
            get_client(sync_client=True) as client:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (deployments := client.read_deployments()):
            assert serve.poll() is None, f"reid serve exited:\n{tail(serve_log)}"
            assert time.monotonic() < deadline, f"no deployment registered:\n{tail(serve_log)}"
            time.sleep(1)
        assert [(d.name, d.entrypoint) for d in deployments] == [
            ("tiny-retrain", "flows/pipeline.py:pipeline")]  # --only served just that one
        run = wait_for_scheduled_run(client, deployments[0].id, serve, serve_log)

    assert run.state.is_completed(), f"{run.state}:\n{tail(serve_log)}"
    assert run.auto_scheduled  # created by the schedule, not by hand
    assert run.parameters == {"config": str(RECIPE), "overrides": overrides}
    assert "tiny-retrain" in serve_log.read_text()  # the serve process said what it serves

    results = json.loads((output_dir / "results.json").read_text())["SyntheticMarket1501"]
    mlflow = MlflowClient(mlflow_uri)
    experiment = mlflow.get_experiment_by_name("reid")
    parents = mlflow.search_runs([experiment.experiment_id], "tags.`reid.flow` = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["OUTPUT_DIR"] == str(output_dir)
    assert parent.data.params["SOLVER.MAX_EPOCH"] == "1"
    assert parent.data.metrics["SyntheticMarket1501.mAP"] == pytest.approx(results["mAP"])
    assert parent.data.tags["reid.data.version"] == data_version(  # the tiny set, untracked
        load_config(RECIPE, overrides)).tag
    assert parent.data.tags["mlflow.source.git.commit"] in {commit_before, git_head()}
    stages = mlflow.search_runs([experiment.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {s.info.run_name for s in stages} == STAGES
