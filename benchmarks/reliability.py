"""Reliability check: the failures a user or an operator meets, through the real entry points.

Each case runs ``reid`` commands as subprocesses (signals and crashes included) on a tiny
Market-1501-layout folder outside ``data/``, and checks what a careful user expects: one
``reid: error:`` line and no traceback, a non-zero exit, nothing already saved damaged, MLflow
runs closed with the right status, no process left behind. Prints one line per case:

    case, exit code, lines printed (stderr lines that are neither log records nor progress
    bars), seconds, verdict (ok / FAIL: what did not hold / skipped: why)

    python benchmarks/reliability.py [--only CASE ...] [--workdir DIR]

The disk-full cases mount small tmpfs file systems, so they run as root only (skipped
otherwise). ``tests/test_reliability.py`` runs every case and asserts its verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
REID = [sys.executable, "-m", "reid.cli"]
# A few seconds of training per epoch on 2 cores; only training-speed keys besides DATASETS.*.
TINY = ["MODEL.DEVICE", "cpu", "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
        "INPUT.PADDING", "4", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16",
        "SOLVER.STEPS", "[1]", "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
        "SOLVER.LOG_PERIOD", "1", "TEST.IMS_PER_BATCH", "32", "TEST.PRECISE_BN.NUM_ITER", "2"]
MARKET = ["DATASETS.NAMES", '("Market1501",)', "DATASETS.TESTS", '("Market1501",)']
# Our log format (time first) and MLflow's (date and time first).
LOG_RECORD = re.compile(r"^(\d\d:\d\d:\d\d |\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?"
                        r"(INFO|WARNING|DEBUG)\b")
TIMEOUT_S = 300  # a hang guard, not a speed target


@dataclass
class Proc:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("reid: error:")]

    @property
    def printed(self) -> int:
        """Lines of stderr that are neither log records nor progress bars."""
        return sum(1 for line in self.stderr.splitlines() if line.strip()
                   and not LOG_RECORD.match(line) and "\r" not in line and "it/s" not in line
                   and "s/it" not in line and not line.startswith(("train:", "extract"))
                   and not line.startswith(("See https://www.prefect.io", "subset", "-----",
                                            "train ", "query ", "gallery ")))


@dataclass
class Outcome:
    case: str
    rc: Optional[int] = None
    lines: Optional[int] = None
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    skipped: str = ""

    def expect(self, condition: bool, what: str) -> bool:
        if not condition:
            self.failures.append(what)
        return condition

    def one_clean_error(self, proc: Proc, rc: int | None = None, *phrases: str) -> None:
        """Exit ``rc`` (non-zero when None), one ``reid: error:`` line holding ``phrases``, no
        traceback; records the command's figures."""
        self.rc, self.lines, self.seconds = proc.rc, proc.printed, proc.seconds
        self.expect(proc.rc != 0 if rc is None else proc.rc == rc, f"exit code {proc.rc}")
        self.expect(len(proc.error_lines) == 1,
                    f"{len(proc.error_lines)} 'reid: error:' lines (want 1)")
        self.expect("Traceback" not in proc.stderr + proc.stdout, "a traceback was printed")
        line = proc.error_lines[0] if proc.error_lines else ""
        for phrase in phrases:
            self.expect(phrase in line, f"the error line lacks {phrase!r}: {line!r}")

    @property
    def verdict(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        return "ok" if not self.failures else "FAIL: " + "; ".join(self.failures)


class Bench:
    """A work folder with its own MLflow store and a tiny Market-layout dataset outside data/."""

    def __init__(self, workdir: Path, prefect_api_url: str | None = None) -> None:
        self.workdir = Path(workdir)
        # A running Prefect server for the `reid run`s that do not test the temporary one
        # (the suite's: each temporary server costs ~5 s); None: each starts its own.
        self.prefect_api_url = prefect_api_url
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{self.workdir / 'mlflow.db'}"
        self.market = self.workdir / "market"  # DATASETS.ROOT of a Market1501 dataset
        if not (self.market / "Market-1501-v15.09.15").is_dir():
            from reid.data.synthetic import generate_synthetic_market
            generated = generate_synthetic_market(
                self.workdir / "generated", seed=11, num_train_ids=8, num_test_ids=6,
                num_cameras=3, images_per_id=6, num_distractors=4, num_junk=3, size=(64, 32))
            generated.rename(self.market)

    def env(self, temporary_server: bool = False, **extra: str) -> dict:
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri, "PYTHONUNBUFFERED": "1",
               **extra}
        env.pop("PREFECT_API_URL", None)  # without it `reid run` starts a temporary server
        if self.prefect_api_url and not temporary_server:
            env["PREFECT_API_URL"] = self.prefect_api_url
        return env

    def args(self, output: str, *more: str, root: Path | None = None) -> list[str]:
        return [*TINY, "DATASETS.ROOT", str(root or self.market), *MARKET,
                "OUTPUT_DIR", str(self.workdir / output), *more]

    def reid(self, *args: str, env: dict | None = None) -> Proc:
        start = time.monotonic()
        proc = subprocess.run([*REID, *args], cwd=ROOT, env=env or self.env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        return Proc(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def start(self, *args: str) -> subprocess.Popen:
        """A command left running, to be signalled: a `reid run` starts its own temporary
        Prefect server (whose end the cases check). Its output goes to a file ``finish`` reads."""
        log = open(self.workdir / f"proc-{time.monotonic_ns()}.log", "w+")
        popen = subprocess.Popen([*REID, *args], cwd=ROOT, env=self.env(temporary_server=True),
                                 stdout=log, stderr=subprocess.STDOUT, text=True)
        popen.log = log
        return popen

    def finish(self, popen: subprocess.Popen, started: float) -> Proc:
        popen.wait(timeout=TIMEOUT_S)
        popen.log.seek(0)
        text = popen.log.read()
        popen.log.close()
        return Proc(popen.returncode, "", text, time.monotonic() - started)

    def runs(self, output: str) -> list:
        """MLflow runs of OUTPUT_DIR ``output``, oldest first."""
        from mlflow.tracking import MlflowClient
        from tasks.tracking import EXPERIMENT, OUTPUT_DIR_TAG
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return []
        path = str((self.workdir / output).resolve())
        return client.search_runs([experiment.experiment_id],
                                  f"tags.`{OUTPUT_DIR_TAG}` = '{path}'",
                                  order_by=["attributes.start_time ASC"])


# --------------------------------------------------------------------------- helpers
def wait_for(condition: Callable[[], bool], timeout: float = 120.0, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def temporary_servers_of(pid: int) -> list[int]:
    """Processes serving a temporary Prefect server started by process ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tasks.prefect_server" in cmdline and str(pid).encode() in cmdline:
            found.append(int(entry.name))
    return found


def logged_iterations(output_dir: Path) -> bool:
    log = output_dir / "log.txt"
    return log.is_file() and " iter " in log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Tmpfs:
    """A tmpfs of ``size`` at ``path`` (root only), unmounted on exit."""

    def __init__(self, path: Path, size: str) -> None:
        self.path, self.size = path, size

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                        str(self.path)], check=True, capture_output=True)
        return self.path

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def can_mount() -> str:
    """Why the disk-full cases cannot run here ('' when they can)."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    if not Path("/proc/filesystems").read_text().count("tmpfs"):
        return "no tmpfs support"
    return ""


# --------------------------------------------------------------------------- cases
CASES: dict[str, Callable[[Bench], Outcome]] = {}


def case(fn: Callable[[Bench, Outcome], None]) -> Callable[[Bench], Outcome]:
    name = fn.__name__.replace("_", "-")

    def run(bench: Bench) -> Outcome:
        outcome = Outcome(name)
        fn(bench, outcome)
        return outcome
    CASES[name] = run
    return run


@case
def real_dataset_default_recipe(b: Bench, o: Outcome) -> None:
    """`reid run` of the default recipe on a Market-layout folder outside data/, only DATASETS.*
    (and training-speed keys) changed: finishes, with that folder's data version recorded."""
    proc = b.reid("run", *b.args("real", "SOLVER.MAX_EPOCH", "1"))
    o.rc, o.lines, o.seconds = proc.rc, proc.printed, proc.seconds
    if not o.expect(proc.rc == 0, f"exit code {proc.rc}: {proc.error_lines or proc.stderr[-300:]}"):
        return
    results = json.loads((b.workdir / "real" / "results.json").read_text())
    o.expect(list(results) == ["Market1501"], f"results.json sets {list(results)}")
    from reid.config import load_config
    from tasks.data_version import data_version, read_dvc_out
    from tasks.tracking import DATA_VERSION_TAG
    pipeline = [r for r in b.runs("real") if r.data.tags.get("reid.flow") == "pipeline"]
    recorded = pipeline[0].data.tags.get(DATA_VERSION_TAG, "") if pipeline else ""
    folder = data_version(load_config(ROOT / "params" / "synthetic.yml", b.args("real")))
    repo_md5 = read_dvc_out(ROOT / "data.dvc")["md5"]
    o.expect(repo_md5 not in recorded and recorded == folder.tag,
             f"recorded data version {recorded!r}, the folder's is {folder.tag!r}")


@case
def disk_full_at_a_checkpoint(b: Bench, o: Outcome) -> None:
    """The disk fills while the second checkpoint is written: one line, the first intact."""
    if can_mount():
        o.skipped = can_mount()
        return
    with Tmpfs(b.workdir / "small", "200m") as disk:
        proc = b.reid("train", "--no-track", *b.args(str(disk / "out"), "SOLVER.MAX_EPOCH", "3"))
        o.one_clean_error(proc, None, "No space left on device", "model_0002.pth")
        first = disk / "out" / "model_0001.pth"
        import torch
        o.expect(first.is_file() and "model" in torch.load(first, weights_only=True),
                 "model_0001.pth is missing or unreadable")
        leftovers = [p.name for p in (disk / "out").iterdir() if p.name.endswith(".tmp")]
        o.expect(not leftovers, f"temporary files left: {leftovers}")


@case
def disk_full_from_the_start(b: Bench, o: Outcome) -> None:
    if can_mount():
        o.skipped = can_mount()
        return
    with Tmpfs(b.workdir / "full", "1m") as disk:
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"],
                       capture_output=True)
        proc = b.reid("train", "--no-track", *b.args(str(disk / "out"), "SOLVER.MAX_EPOCH", "1"))
        o.one_clean_error(proc, None, "No space left on device", str(disk / "out"))


@case
def mlflow_server_not_answering(b: Bench, o: Outcome) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    proc = b.reid("run", *b.args("unreachable"), env=b.env(MLFLOW_TRACKING_URI=uri))
    o.one_clean_error(proc, 2, uri, "does not answer", "--no-track")


@case
def weights_that_are_a_text_file(b: Bench, o: Outcome) -> None:
    weights = b.workdir / "notes.txt"
    weights.write_text("these are not weights\n")
    proc = b.reid("eval", "--no-track", "--weights", str(weights), *b.args("text-weights"))
    o.one_clean_error(proc, 2, str(weights), "text file", "expected a PyTorch .pth file")


@case
def missing_dataset_through_the_flow(b: Bench, o: Outcome) -> None:
    """A user error inside the Prefect flow: one line, not Prefect's tracebacks."""
    proc = b.reid("run", *b.args("missing", root=b.workdir / "nowhere"))
    o.one_clean_error(proc, 2, "dataset Market1501 not found")


@case
def second_run_on_the_same_output_dir(b: Bench, o: Outcome) -> None:
    first = b.start("train", "--no-track", *b.args("shared", "SOLVER.MAX_EPOCH", "50"))
    started = time.monotonic()
    try:
        o.expect(wait_for(lambda: logged_iterations(b.workdir / "shared")),
                 "first run never trained")
        proc = b.reid("train", "--no-track", *b.args("shared", "SOLVER.MAX_EPOCH", "1"))
        o.one_clean_error(proc, 2, "is in use by another run", f"pid {first.pid}")
        o.expect(first.poll() is None, "the first run did not survive the second")
    finally:
        first.terminate()
        b.finish(first, started)


@case
def fresh_store_created_twice_at_once(b: Bench, o: Outcome) -> None:
    """Two stage commands creating the same fresh SQLite store at once (twice over)."""
    for attempt in range(2):
        env = b.env(MLFLOW_TRACKING_URI=f"sqlite:///{b.workdir / f'race{attempt}.db'}")
        started = time.monotonic()
        procs = [subprocess.Popen([*REID, "prepare", *b.args(f"race{attempt}-{i}")], cwd=ROOT,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
        for p in procs:
            err = p.communicate(timeout=TIMEOUT_S)[1]
            o.expect(p.returncode == 0, f"try {attempt + 1}: exit {p.returncode}: "
                     f"{err.strip().splitlines()[-1] if err.strip() else ''}")
            o.rc = max(o.rc or 0, p.returncode)
        o.seconds += time.monotonic() - started


@case
def sigterm_during_reid_run(b: Bench, o: Outcome) -> None:
    """SIGTERM (a preemption): the training writes a checkpoint at the iteration it stops at
    and exits 143, runs end KILLED, the temporary Prefect server stops; `reid run --resume`
    goes on from that checkpoint."""
    started = time.monotonic()
    out = b.workdir / "sigterm"
    popen = b.start("run", *b.args("sigterm", "SOLVER.MAX_EPOCH", "50",
                                   "SOLVER.CHECKPOINT_PERIOD", "0"))
    if not o.expect(wait_for(lambda: logged_iterations(out)), "never trained"):
        popen.kill()
        return
    popen.send_signal(signal.SIGTERM)
    proc = b.finish(popen, started)
    o.rc, o.lines, o.seconds = proc.rc, proc.printed, proc.seconds
    o.expect(proc.rc == 128 + signal.SIGTERM, f"exit code {proc.rc}")
    o.expect("Traceback" not in proc.stderr, "a traceback was printed")
    stopped = re.search(r"^reid: stopped: SIGTERM at iteration (\d+); checkpoint (\S+);",
                        proc.stderr, re.MULTILINE)
    if not o.expect(stopped is not None, "no 'stopped' line"):
        return
    iteration, checkpoint = int(stopped.group(1)), Path(stopped.group(2))
    o.expect(checkpoint == out / f"model_iter_{iteration:07d}.pth" and checkpoint.is_file(),
             f"no checkpoint {checkpoint}")
    statuses = {r.info.run_name: r.info.status for r in b.runs("sigterm")}
    o.expect(statuses.get("train") == "KILLED" and statuses.get("pipeline:synthetic") == "KILLED",
             f"run statuses {statuses}")
    o.expect(wait_for(lambda: not temporary_servers_of(popen.pid), 20),
             "the temporary Prefect server outlived `reid run`")
    import torch
    state = torch.load(checkpoint, weights_only=True)["trainer"]
    epochs = iteration // state["iters_per_epoch"] + 1  # the epoch it stopped in, finished
    resumed = b.reid("run", "--resume", *b.args("sigterm", "SOLVER.MAX_EPOCH", str(epochs),
                                                 "SOLVER.CHECKPOINT_PERIOD", "0"))
    o.seconds = time.monotonic() - started
    o.expect(resumed.rc == 0, f"resume exit code {resumed.rc}: {resumed.error_lines}")
    log = (out / "log.txt").read_text()
    o.expect(f"from iteration {iteration + 1}" in log, "the resume did not continue there")


@case
def kill_9_then_resume(b: Bench, o: Outcome) -> None:
    """kill -9: the server goes, the next start removes interrupted writes and closes the
    runs; --resume continues the same MLflow train run."""
    out = b.workdir / "killed"
    args = b.args("killed", "SOLVER.MAX_EPOCH", "3")
    started = time.monotonic()
    popen = b.start("run", *args)
    # `last_checkpoint` is written after the checkpoint it names: killed between the two writes,
    # the run has no checkpoint to resume from yet (it is the commit point), so wait for it.
    if not o.expect(wait_for(lambda: (out / "last_checkpoint").is_file()),
                    "no first checkpoint"):
        popen.kill()
        return
    popen.kill()
    b.finish(popen, started)
    o.expect(wait_for(lambda: not temporary_servers_of(popen.pid), 20),
             "the temporary Prefect server outlived a killed `reid run`")
    debris = out / ".model_0002.pth.0123456789abcdef.tmp"  # as an interrupted save leaves it
    debris.write_bytes(b"half a checkpoint")
    before = {r.info.run_id: r.info.run_name for r in b.runs("killed")}
    proc = b.reid("run", "--resume", *args)
    o.rc, o.lines, o.seconds = proc.rc, proc.printed, time.monotonic() - started
    if not o.expect(proc.rc == 0, f"resume exit code {proc.rc}: {proc.error_lines}"):
        return
    o.expect(not debris.exists(), "the interrupted write's temporary file was not removed")
    runs = b.runs("killed")
    trains = [r for r in runs if r.info.run_name == "train"]
    o.expect(len(trains) == 1 and trains[0].info.run_id in before,
             f"{len(trains)} train runs; the resumed one is new")
    o.expect(all(r.info.status == "FINISHED" for r in runs),
             f"statuses {[(r.info.run_name, r.info.status) for r in runs]}")


@case
def negative_epochs(b: Bench, o: Outcome) -> None:
    proc = b.reid("train", "--no-track", *b.args("negative", "SOLVER.MAX_EPOCH", "-1"))
    o.one_clean_error(proc, 2, "SOLVER.MAX_EPOCH")
    o.expect(not (b.workdir / "negative" / "model_final.pth").exists(), "model_final.pth written")


@case
def truncated_jpeg_found_by_prepare(b: Bench, o: Outcome) -> None:
    import shutil
    root = b.workdir / "damaged"
    if not root.exists():
        shutil.copytree(b.market, root)
    victim = sorted((root / "Market-1501-v15.09.15" / "bounding_box_train").glob("*.jpg"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])
    proc = b.reid("prepare", "--no-track", *b.args("damaged-out", root=root))
    o.one_clean_error(proc, 2, victim.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run")
    parser.add_argument("--workdir", help="work folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="reid-reliability-"))
    bench = Bench(workdir)
    print(f"{'case':<38} {'exit':>4} {'lines':>5} {'seconds':>8}  verdict")
    failed = 0
    for name in args.only or CASES:
        outcome = CASES[name](bench)
        failed += bool(outcome.failures)
        rc = "-" if outcome.rc is None else outcome.rc
        lines = "-" if outcome.lines is None else outcome.lines
        print(f"{name:<38} {rc:>4} {lines:>5} {outcome.seconds:8.1f}  {outcome.verdict}",
              flush=True)
    print(f"work folder: {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
