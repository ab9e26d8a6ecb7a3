"""Launching a stage on many processes and machines through torchrun (PyTorch's elastic
launcher, ``torch.distributed.run``): its options under its own names, checked before anything
starts, and the run of torchrun itself with its workers' stderr passed through.

``reid train --nproc-per-node 4`` on one machine is ``torchrun --standalone``;
``reid train --nnodes 2 --node-rank R --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint
HOST:PORT --rdzv-id JOB`` on each of two machines is the whole multi-node recipe (``--nnodes
MIN:MAX`` for an elastic job, ``--max-restarts K`` for torchrun to restart a failed worker
group K times; a restarted group resumes from the newest checkpoint by itself, see
``reid.stages.train``). No launcher of our own: torchrun's agent does the rendezvous, the
restarts and the signal forwarding.

The workers' ``reid: error:`` and ``reid: stopped:`` lines are not passed through (every rank
prints the same one); ``run_torchrun`` returns the first of each for the caller to report once.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

from reid.errors import STOPPED_PREFIX, USER_ERROR_PREFIX, Preempted, ReidError, Terminated

# option name (torchrun's, with dashes) -> (argparse keywords, help)
TORCHRUN_OPTIONS: dict[str, dict] = {
    "--nproc-per-node": {"type": int, "metavar": "N", "help": "processes on this machine (one "
                         "per GPU over NCCL; CPU processes over gloo without GPUs)"},
    "--nnodes": {"metavar": "N|MIN:MAX", "help": "machines in the job (MIN:MAX: elastic)"},
    "--node-rank": {"type": int, "metavar": "R", "help": "this machine's rank (static jobs)"},
    "--rdzv-backend": {"metavar": "NAME", "help": "rendezvous backend (c10d, etcd, static)"},
    "--rdzv-endpoint": {"metavar": "HOST:PORT", "help": "rendezvous address, the same on every "
                        "machine"},
    "--rdzv-id": {"metavar": "ID", "help": "job id, the same on every machine"},
    "--max-restarts": {"type": int, "metavar": "K", "help": "worker group restarts before the "
                       "job fails (each resumes from the newest checkpoint)"},
}
# torchrun's agent passes these on to its workers (its default list lacks SIGUSR1, Slurm's
# warning signal, which would otherwise kill the agent outright).
SIGNALS_ENV = {"TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
# How long an interrupted launch waits for the workers to write their checkpoint (torchrun
# itself gives them 30 s before SIGKILL).
STOP_GRACE_S = 60
PEER_GRACE_S = 10  # how long a rank > 0 leaves rank 0 to stop the job (stop_the_job)


def dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Launch:
    """torchrun's options for one machine of the job."""
    nproc_per_node: int = 1
    nnodes: str = "1"
    node_rank: Optional[int] = None
    rdzv_backend: Optional[str] = None
    rdzv_endpoint: Optional[str] = None
    rdzv_id: Optional[str] = None
    max_restarts: Optional[int] = None

    @classmethod
    def from_args(cls, args) -> Optional["Launch"]:
        """The launch the command line asks for; None when it gives no torchrun option (or
        this process is already one of torchrun's workers)."""
        given = {dest(o): getattr(args, dest(o), None) for o in TORCHRUN_OPTIONS}
        given = {k: v for k, v in given.items() if v is not None}
        if not given or launched_by_torchrun():
            return None
        launch = cls(**{k: str(v) if k == "nnodes" else v for k, v in given.items()})
        launch.check()
        return launch

    @property
    def node_range(self) -> tuple[int, int]:
        low, _, high = self.nnodes.partition(":")
        try:
            return int(low), int(high or low)
        except ValueError:
            raise ReidError(f"--nnodes must be N or MIN:MAX (whole numbers); got "
                            f"{self.nnodes!r}") from None

    @property
    def multi_node(self) -> bool:
        return self.node_range[1] > 1

    def check(self) -> None:
        """Options that cannot work together, refused with one line before anything starts."""
        low, high = self.node_range
        if self.nproc_per_node < 1:
            raise ReidError(f"--nproc-per-node must be >= 1, got {self.nproc_per_node}")
        if not 1 <= low <= high:
            raise ReidError(f"--nnodes {self.nnodes}: expected 1 <= MIN <= MAX")
        if self.max_restarts is not None and self.max_restarts < 0:
            raise ReidError(f"--max-restarts must be >= 0, got {self.max_restarts}")
        if self.node_rank is not None and not 0 <= self.node_rank < high:
            raise ReidError(f"--node-rank {self.node_rank} is not in 0..{high - 1} "
                            f"(--nnodes {self.nnodes})")
        if self.multi_node and not self.rdzv_endpoint:
            raise ReidError(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT (and "
                            "--rdzv-id) so that the machines find each other")
        if self.rdzv_endpoint and not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", self.rdzv_endpoint):
            raise ReidError(f"--rdzv-endpoint must be HOST:PORT, got {self.rdzv_endpoint!r}")
        if self.rdzv_backend == "static" and self.node_rank is None and self.multi_node:
            raise ReidError("--rdzv-backend static needs --node-rank on every machine")

    def torchrun_args(self) -> list[str]:
        """torchrun's own arguments for this launch (``--standalone`` on one machine without
        a rendezvous address)."""
        args = [f"--nproc-per-node={self.nproc_per_node}"]
        if not self.multi_node and not self.rdzv_endpoint:
            args.append("--standalone")
        else:
            args.append(f"--nnodes={self.nnodes}")
            for name in ("node_rank", "rdzv_backend", "rdzv_endpoint", "rdzv_id"):
                value = getattr(self, name)
                if value is not None:
                    args.append(f"--{name.replace('_', '-')}={value}")
        if self.max_restarts is not None:
            args.append(f"--max-restarts={self.max_restarts}")
        return args

    def command(self, module_args: list[str]) -> list[str]:
        """``python -m torch.distributed.run <options> -m <module_args>``."""
        return [sys.executable, "-m", "torch.distributed.run", *self.torchrun_args(), "-m",
                *module_args]


def add_refused_torchrun_options(parser) -> None:
    """``reid run``: torchrun's options other than --nproc-per-node, parsed to be refused in
    one line (``refuse_multi_machine``) rather than called unknown."""
    for option, keywords in TORCHRUN_OPTIONS.items():
        if option != "--nproc-per-node":
            parser.add_argument(option, **{**keywords, "help": "(reid train only)"})


def refuse_multi_machine(args) -> None:
    """The flow runs its stages on this machine: torchrun's multi-machine and restart options
    belong to ``reid train`` (one agent per machine; deploy/), one line says so."""
    given = [option for option in TORCHRUN_OPTIONS if option != "--nproc-per-node"
             and getattr(args, dest(option), None) is not None]
    if given:
        raise ReidError(f"reid run trains on this machine (--nproc-per-node N) and retries a "
                        f"failed training itself, resuming; {', '.join(given)}: run `reid "
                        f"train` with torchrun's options on each machine (deploy/slurm, "
                        f"deploy/kubernetes), then `reid precise-bn` and `reid evaluate`")


def launched_by_torchrun() -> bool:
    """Whether this process is one of torchrun's workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ


@dataclass
class Outcome:
    returncode: int
    user_error: Optional[str] = None   # the first worker's "reid: error:" line, no prefix
    stopped: Optional[str] = None      # the first worker's "reid: stopped:" line, no prefix
    interrupted: Optional[BaseException] = None  # what interrupted the launch itself

    def raise_for_workers(self) -> None:
        """Raise what the workers reported (their user error, their clean stop), else what
        interrupted this launch; nothing when all went well."""
        if self.user_error:
            raise ReidError(self.user_error)
        if self.stopped:
            raise preempted_from_line(self.stopped)
        if self.interrupted is not None:
            raise self.interrupted


def stop_the_job() -> None:
    """In a torchrun worker that failed for a reason a restart cannot cure (a user error,
    the same on every rank): ask its agent to stop the job (SIGTERM, which torchrun handles
    by stopping its workers, without a restart), so that --max-restarts is not spent on it.

    Rank 0 asks at once. Another rank first gives rank 0 ``PEER_GRACE_S`` to do it: an error
    every rank meets (a diverged loss) reaches rank 0 too, which then closes its MLflow run
    and its files before the job stops; a SIGTERM from a faster rank would cut that short.
    Only an error of that rank alone outlives the grace."""
    if not launched_by_torchrun():
        return
    if os.environ.get("RANK", "0") != "0":
        try:
            time.sleep(PEER_GRACE_S)
        except (Terminated, KeyboardInterrupt):  # rank 0 stopped the job meanwhile
            return
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    if b"torch.distributed.run" in cmdline or b"torchrun" in cmdline:
        os.kill(parent, signal.SIGTERM)


STOPPED_LINE = re.compile(r"^(SIG\w+) at iteration (\d+); checkpoint (.+?); ")


def preempted_from_line(text: str) -> Preempted:
    match = STOPPED_LINE.match(text)
    if match is None:
        return Preempted(signal.SIGTERM, -1, "unknown")
    return Preempted(signal.Signals[match.group(1)], int(match.group(2)), match.group(3))


def run_torchrun(command: list[str], env: dict) -> Outcome:
    """Run ``command`` (torchrun) passing its stderr through, except the workers' error and
    stop lines, kept for the caller. Interrupted (SIGTERM, Ctrl-C), it passes the signal on to
    torchrun, which passes it to its workers, and waits for them to write their checkpoint."""
    outcome = Outcome(returncode=-1)
    with subprocess.Popen(command, env={**env, **SIGNALS_ENV}, stderr=subprocess.PIPE,
                          text=True, errors="replace") as proc:
        try:
            for line in proc.stderr:
                _take(outcome, line)
        except BaseException as exc:
            outcome.interrupted = exc
            proc.send_signal(signal.SIGTERM)
            try:
                _, rest = proc.communicate(timeout=STOP_GRACE_S)  # drained: no worker blocks
                for line in (rest or "").splitlines(keepends=True):
                    _take(outcome, line)
            except subprocess.TimeoutExpired:
                proc.kill()
    outcome.returncode = proc.returncode
    return outcome


def _take(outcome: Outcome, line: str) -> None:
    """One line of torchrun's stderr: the workers' error / stop lines are kept; after an
    error, torchrun's own failure report (tracebacks of every rank) is not shown."""
    # A progress bar's redraws may precede the line, and rank 0's bar (no newline yet) may
    # hold the start of another rank's line: the prefix is looked for anywhere.
    text = line.rsplit("\r", 1)[-1]
    error_at, stop_at = text.find(USER_ERROR_PREFIX), text.find(STOPPED_PREFIX)
    if error_at >= 0:
        outcome.user_error = (outcome.user_error
                              or text[error_at + len(USER_ERROR_PREFIX):].strip())
    elif stop_at >= 0:
        outcome.stopped = outcome.stopped or text[stop_at + len(STOPPED_PREFIX):].strip()
    elif outcome.user_error is None:
        sys.stderr.write(line)
