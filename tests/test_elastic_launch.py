"""``reid train`` with torchrun's options (``reid.elastic_launch``): options that cannot work
together refused in one line; two torchrun agents on this machine (c10d rendezvous on
127.0.0.1) against one machine's two processes; a worker killed with SIGKILL under
``--max-restarts 1`` (the group restarts and resumes by itself); a user error that torchrun
must not restart. Real processes over gloo; the runs are a dozen iterations of a tiny model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import RECIPE, ROOT, TINY_DATA, TINY_TRAIN, as_overrides, free_port
from reid.cli import main
from reid.elastic_launch import Launch
from reid.engine.checkpoint import LAST_CHECKPOINT
from reid.errors import ReidError

SMALL = {  # 3 iterations per epoch, per-rank batches of 8 (2 identities x 4 images)
    "MODEL.BACKBONE.NAME": "build_osnet_backbone",
    "MODEL.BACKBONE.DEPTH": "x0_25",
    "MODEL.BACKBONE.FEAT_DIM": 128,
    "SOLVER.MAX_EPOCH": 3,
    "SOLVER.CHECKPOINT_PERIOD": 0,
    "SOLVER.CHECKPOINT_PERIOD_ITERS": 4,
    "SOLVER.LOG_PERIOD": 1,
}
TOLERANCE = 1e-6


def train_command(root: Path, output: Path, *options: str, **changes) -> list[str]:
    overrides = as_overrides({**TINY_DATA, **TINY_TRAIN, **SMALL, "DATASETS.ROOT": str(root),
                              "OUTPUT_DIR": str(output), **changes})
    return [sys.executable, "-m", "reid.cli", "train", "--no-track", *options,
            "--config", str(RECIPE), *overrides]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=400)


def final_weights(output: Path) -> dict:
    return torch.load(output / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(output: Path, reference: Path) -> None:
    mine, theirs = final_weights(output), final_weights(reference)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.allclose(mine[key].double(), value.double(), rtol=0, atol=TOLERANCE), key


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("options, message", [
    (["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT (and --rdzv-id) so that "
                        "the machines find each other"),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"],
     "--node-rank 2 is not in 0..1 (--nnodes 2)"),
    (["--nnodes", "3:2", "--rdzv-endpoint", "h:1"], "--nnodes 3:2: expected 1 <= MIN <= MAX"),
    (["--nnodes", "two"], "--nnodes must be N or MIN:MAX (whole numbers); got 'two'"),
    (["--nproc-per-node", "0"], "--nproc-per-node must be >= 1, got 0"),
    (["--nnodes", "2", "--rdzv-endpoint", "no-port"],
     "--rdzv-endpoint must be HOST:PORT, got 'no-port'"),
])
def test_options_that_cannot_work_are_refused_in_one_line(options, message, tmp_path, capsys):
    assert main(["train", *options, "OUTPUT_DIR", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"reid: error: {message}"
    assert not (tmp_path / "out").exists()


def test_torchrun_gets_its_own_options():
    assert Launch(nproc_per_node=2).torchrun_args() == ["--nproc-per-node=2", "--standalone"]
    launch = Launch(nproc_per_node=4, nnodes="1:3", node_rank=0, rdzv_backend="c10d",
                    rdzv_endpoint="10.0.0.1:29400", rdzv_id="job7", max_restarts=3)
    assert launch.torchrun_args() == [
        "--nproc-per-node=4", "--nnodes=1:3", "--node-rank=0", "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.1:29400", "--rdzv-id=job7", "--max-restarts=3"]
    with pytest.raises(ReidError):
        Launch(max_restarts=-1).check()


# --------------------------------------------------------------------------- real launches
@pytest.fixture(scope="module")
def two_processes(tiny_root, tmp_path_factory) -> Path:
    """The reference: one machine, two processes, no interruption."""
    output = tmp_path_factory.mktemp("two-processes") / "out"
    done = run(train_command(tiny_root, output, "--nproc-per-node", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def test_two_agents_with_a_c10d_rendezvous_train_like_one_machine(two_processes, tiny_root,
                                                                   tmp_path):
    output = tmp_path / "out"
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [subprocess.Popen(train_command(
        tiny_root, output, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-agents"),
        cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    errors = [agent.communicate(timeout=400)[1] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert_same_weights(output, two_processes)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_killed_worker_is_restarted_and_resumes_to_the_same_weights(two_processes, tiny_root,
                                                                       tmp_path):
    output = tmp_path / "out"
    launcher = subprocess.Popen(train_command(tiny_root, output, "--nproc-per-node", "2",
                                              "--max-restarts", "1"),
                                cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not (output / LAST_CHECKPOINT).is_file():
        assert launcher.poll() is None, launcher.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    agents = children(launcher.pid)
    workers = [pid for agent in agents for pid in children(agent)]
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)
    stderr = launcher.communicate(timeout=400)[1]
    assert launcher.returncode == 0, stderr[-3000:]
    log = (output / "log.txt").read_text()
    assert "worker group restart 1: resuming from the newest checkpoint" in log
    assert_same_weights(output, two_processes)


def test_a_user_error_is_not_restarted(tiny_root, tmp_path):
    output = tmp_path / "out"
    done = run(train_command(tiny_root, output, "--nproc-per-node", "2", "--max-restarts", "2",
                             **{"SOLVER.BASE_LR": 1e30}))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("reid: error: loss became nan on rank ")
    assert [line for line in done.stderr.splitlines() if "reid: error:" in line] == [last]
    assert (output / "log.txt").read_text().count("training epochs") == 1  # no restart


def test_reid_run_sends_multi_machine_options_to_reid_train(capsys):
    assert main(["run", "--nnodes", "2", "--max-restarts", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "reid: error: reid run trains on this machine (--nproc-per-node N) and retries a failed "
        "training itself, resuming; --nnodes, --max-restarts: run `reid train` with torchrun's "
        "options on each machine (deploy/slurm, deploy/kubernetes), then `reid precise-bn` and "
        "`reid evaluate`")


def test_workers_stopped_by_a_signal_are_retried_and_the_launcher_exits_like_them(
        monkeypatch, tiny_overrides):
    from reid.config import load_config
    from reid.elastic_launch import Outcome
    from reid.errors import Preempted
    from tasks import distributed
    line = "SIGUSR1 at iteration 12; checkpoint /out/model_iter_0000012.pth; --resume continues"
    monkeypatch.setattr(distributed, "run_torchrun",
                        lambda command, env: Outcome(returncode=1, stopped=line + " from it"))
    cfg = load_config(str(RECIPE), tiny_overrides)
    # a RuntimeError, not a ReidError: the Prefect train task retries it (resuming)
    with pytest.raises(RuntimeError, match=r"stopped by a signal \(SIGUSR1 at iteration 12;"):
        distributed.train(cfg, 2, tracking_uri=None)
    with pytest.raises(Preempted) as stop:  # `reid train --nproc-per-node N` itself
        Outcome(returncode=1, stopped=line + " from it").raise_for_workers()
    assert (stop.value.exit_code, stop.value.iteration, stop.value.checkpoint) == (
        138, 12, "/out/model_iter_0000012.pth")


def test_the_deploy_examples_are_complete_files_that_launch_reid_train():
    import yaml
    sbatch = ROOT / "deploy" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(sbatch)]).returncode == 0  # parses as a script
    script = sbatch.read_text()
    assert script.startswith("#!/bin/bash") and "#SBATCH --signal=B:USR1@" in script
    assert 'srun --kill-on-bad-exit=0 "$VENV/bin/reid" train' in script
    for option in ("--nnodes", "--nproc-per-node", "--rdzv-backend c10d", "--rdzv-endpoint",
                   "--rdzv-id", "--max-restarts"):
        assert option in script, option
    job = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "pytorchjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["spec"]["elasticPolicy"]["rdzvBackend"] == "c10d"
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["restartPolicy"] == "ExitCode"
    container = worker["template"]["spec"]["containers"][0]
    assert "exec reid train" in container["args"][0] and "--rdzv-endpoint" in container["args"][0]


def test_an_error_glued_to_another_ranks_progress_bar_is_still_the_error():
    from reid.elastic_launch import Outcome, _take
    outcome = Outcome(returncode=1)
    # rank 0's bar had no newline yet when rank 1 wrote its line into the same pipe
    _take(outcome, "train:  11%|#  | 1/9 [00:00<00:02, loss=4.1160]reid: error: loss became "
                   "nan on rank 1\n")
    _take(outcome, "\rtrain: 22%|##  | 2/9reid: stopped: checkpoint at iteration 2\n")
    assert (outcome.user_error, outcome.stopped) == ("loss became nan on rank 1",
                                                     "checkpoint at iteration 2")
