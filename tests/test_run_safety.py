"""Runs that cannot corrupt each other or leave debris: the OUTPUT_DIR lock, interrupted
writes, runs closed as KILLED / continued on resume, the tracking-server check, the quiet
log file, the console filter for Prefect's copies of a user error, precise-BN's dataset."""
from __future__ import annotations

import errno
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY_DATA, as_overrides, free_port
from reid.config import load_config
from reid.errors import ReidError, Terminated, describe_os_error
from reid.utils import io as reid_io
from reid.utils import run_lock
from reid.utils.logs import LogFile
from reid.utils.run_lock import LOCK_FILE, hold_output_dir, inherit_env


# --------------------------------------------------------------------------- OUTPUT_DIR lock
HOLDER = """
import sys, time
from reid.utils.run_lock import hold_output_dir
with hold_output_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held_elsewhere(tmp_path):
    """OUTPUT_DIR ``tmp_path / 'out'`` held by another process (yielded)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_run_is_refused_with_the_holder_named(held_elsewhere):
    out, holder = held_elsewhere
    with pytest.raises(ReidError) as error:
        with hold_output_dir(out):
            pass
    message = str(error.value)
    assert message.startswith(f"OUTPUT_DIR {out} is in use by another run (pid {holder.pid} on ")
    assert "wait for it to finish or set OUTPUT_DIR to another folder" in message


def test_the_lock_goes_with_its_process_even_on_kill_9(held_elsewhere):
    out, holder = held_elsewhere
    holder.kill()
    holder.wait()
    with hold_output_dir(out):  # no stale lock to clean by hand
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_process_may_hold_it_again_and_children_inherit_it(held_elsewhere, monkeypatch, tmp_path):
    mine = tmp_path / "mine"
    with hold_output_dir(mine), hold_output_dir(mine):  # the flow, then its stage
        pass
    with hold_output_dir(mine):  # released after the outer block
        pass
    out, _ = held_elsewhere
    monkeypatch.setenv(*next(iter(inherit_env(out).items())))
    with hold_output_dir(out):  # a torchrun worker of the holder
        pass
    monkeypatch.delenv(run_lock.INHERITED_ENV)
    monkeypatch.setenv("RANK", "1")
    with hold_output_dir(out):  # ranks other than 0 never lock
        pass


def test_interrupted_writes_are_removed_when_a_run_starts(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    debris = out / ".model_0004.pth.0123456789abcdef.tmp"
    keep = [out / ".hidden.tmp", out / "model_0004.pth", out / "notes.0123456789abcdef.tmp"]
    for path in [debris, *keep]:
        path.write_bytes(b"x")
    with hold_output_dir(out):
        pass
    assert not debris.exists()
    assert all(path.exists() for path in keep)


# --------------------------------------------------------------------------- atomic writes
def test_a_writer_that_fills_the_disk_raises_enospc_naming_the_file(tmp_path, monkeypatch):
    """torch's zip writer raises a RuntimeError without errno when the disk fills."""
    def fill(f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(reid_io.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    with pytest.raises(OSError) as error:
        reid_io.atomic_write(tmp_path / "model_final.pth", fill)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(tmp_path / "model_final.pth")
    assert list(tmp_path.iterdir()) == []
    assert describe_os_error(error.value) == (
        f"No space left on device ({tmp_path / 'model_final.pth'}); free some space (a training "
        "resumes from its last checkpoint with --resume)")


def test_a_writer_error_with_room_left_is_not_called_a_full_disk(tmp_path):
    def broken(f):
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug"):
        reid_io.atomic_write(tmp_path / "x.pth", broken)


# --------------------------------------------------------------------------- MLflow runs
def test_interrupted_runs_end_killed_and_failures_failed(tmp_path, mlflow_uri):
    from tasks.tracking import Tracker

    class ExternalSignal(BaseException):  # Prefect's signal exceptions, matched by name
        pass

    class TerminationSignal(ExternalSignal):
        pass

    tracker = Tracker()
    statuses = {}
    for error in (Terminated(), KeyboardInterrupt(), TerminationSignal(), ValueError()):
        with pytest.raises(BaseException):
            with tracker.run(type(error).__name__) as run_id:
                raise error
        statuses[type(error).__name__] = tracker.client.get_run(run_id).info.status
    assert statuses == {"Terminated": "KILLED", "KeyboardInterrupt": "KILLED",
                        "TerminationSignal": "KILLED", "ValueError": "FAILED"}


# The second pair: MLflow's filter cannot quote a quote; both folders match its LIKE pattern.
@pytest.mark.parametrize("out, other", [("out", "other"), ("it's \"out\"", "itxs xoutx")])
def test_abandoned_runs_are_closed_and_a_resume_continues_its_run(tmp_path, mlflow_uri, out,
                                                                   other):
    from tasks.tracking import OUTPUT_DIR_TAG, Tracker
    cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path / out)])
    other_cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path / other)])
    tracker = Tracker()
    tags = lambda c, **t: {OUTPUT_DIR_TAG: str((tmp_path / c).resolve()), **t}  # noqa: E731
    parent = tracker.start("pipeline", tags=tags(out, **{"reid.flow": "pipeline"}))
    train = tracker.start("train", parent, tags=tags(out, **{"reid.stage": "train"}))
    finished = tracker.start("prepare", parent, tags=tags(out, **{"reid.stage": "prepare"}))
    tracker.end(finished)
    elsewhere = tracker.start("train", tags=tags(other, **{"reid.stage": "train"}))
    user_parent = tracker.start("dvc parent", tags=tags(out))

    assert sorted(tracker.close_abandoned(cfg.OUTPUT_DIR, keep=(user_parent,))) == sorted(
        [parent, train])
    status = lambda run: tracker.client.get_run(run).info.status  # noqa: E731
    assert [status(r) for r in (parent, train, finished, elsewhere, user_parent)] == [
        "KILLED", "KILLED", "FINISHED", "RUNNING", "RUNNING"]
    assert tracker.resumable(cfg.OUTPUT_DIR, {"reid.stage": "train"}, parent) == train
    assert tracker.resumable(cfg.OUTPUT_DIR, {"reid.stage": "train"}, "another parent") is None
    assert tracker.resumable(cfg.OUTPUT_DIR, {"reid.stage": "prepare"}) is None  # finished
    assert tracker.resumable(other_cfg.OUTPUT_DIR, {"reid.stage": "train"}) == elsewhere
    with tracker.run("train", existing_id=train) as continued:
        tracker.log_config(continued, cfg)
    assert continued == train and status(train) == "FINISHED"


def test_a_continued_run_keeps_its_params_when_the_config_changed(tmp_path, mlflow_uri, caplog):
    from tasks.tracking import Tracker
    tracker = Tracker()
    run_id = tracker.start("train")
    tracker.log_config(run_id, load_config(None, ["SOLVER.MAX_EPOCH", "4"]))
    tracker.log_config(run_id, load_config(None, ["SOLVER.MAX_EPOCH", "8"]))  # MLflow refuses
    assert tracker.client.get_run(run_id).data.params["SOLVER.MAX_EPOCH"] == "4"
    assert "keeps its logged values of SOLVER.MAX_EPOCH" in caplog.text


def test_fresh_sqlite_store_created_by_two_processes_at_once(tmp_path):
    # Once here (the store's contents checked); benchmarks/reliability.py's
    # fresh-store-created-twice-at-once case races two `reid prepare` commands twice more.
    script = ("import sys; from tasks.tracking import Tracker; "
              "Tracker(sys.argv[1]); print('ok')")
    for attempt in range(1):
        uri = f"sqlite:///{tmp_path / f'store{attempt}.db'}"
        procs = [subprocess.Popen([sys.executable, "-c", script, uri], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert len(MlflowClient(uri).search_experiments()) == 2  # Default and reid, once each


# --------------------------------------------------------------------------- tracking server
def test_a_tracking_server_that_does_not_answer_is_one_line_at_once():
    from tasks.tracking import check_server
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReidError) as error:
        check_server(uri, timeout=2)
    assert str(error.value).startswith(f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) "
                                       "does not answer within 2 s (")
    assert "--no-track" in str(error.value)


def test_any_http_answer_counts_as_a_server(tmp_path):
    from tasks.tracking import check_server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_server(f"http://127.0.0.1:{server.server_port}")
        check_server(f"sqlite:///{tmp_path / 'x.db'}")  # local stores are not checked
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- console and log
def test_the_log_file_says_once_that_it_cannot_write_and_stops(tmp_path, capsys):
    handler = LogFile(tmp_path / "log.txt")
    record = logging.LogRecord("reid", logging.INFO, __file__, 1, "step %d", (1,), None)
    handler.stream.close()  # writes now fail, as on a full disk
    for _ in range(3):
        handler.emit(record)
    err = capsys.readouterr().err
    assert err.count("reid: warning: cannot write") == 1 and "Traceback" not in err
    assert "logging to the console only" in err


def test_prefects_copies_of_a_user_error_stay_off_the_console():
    from reid.commands import drop_reported_user_errors

    def record(name, message, exc=None):
        exc_info = (type(exc), exc, None) if exc else None
        return logging.LogRecord(name, logging.ERROR, __file__, 1, message, (), exc_info)

    assert not drop_reported_user_errors(record("prefect.flow_runs", "Encountered exception",
                                                ReidError("no dataset")))
    assert not drop_reported_user_errors(record(
        "prefect.task_runs", "Finished in state Failed('Task run encountered an exception "
        "ReidError: no dataset')"))
    assert drop_reported_user_errors(record("prefect.flow_runs", "Crash", ValueError("bug")))
    assert drop_reported_user_errors(record("reid.stages", "ReidError mentioned by reid"))


def test_the_temporary_prefect_server_is_started_under_watch():
    from tasks.prefect_server import _WatchedSubprocess
    calls = []
    watched = _WatchedSubprocess()
    original = subprocess.Popen
    try:
        subprocess.Popen = lambda args, *a, **k: calls.append(args)
        watched.Popen([sys.executable, "-m", "uvicorn", "--port", "8123"], env={})
        watched.Popen([sys.executable, "-m", "other"])
    finally:
        subprocess.Popen = original
    assert calls == [[sys.executable, "-m", "tasks.prefect_server", str(os.getpid()),
                      "--port", "8123"], [sys.executable, "-m", "other"]]
    assert watched.TimeoutExpired is subprocess.TimeoutExpired


# --------------------------------------------------------------------------- precise-BN
def test_precise_bn_uses_the_first_training_set_unless_one_is_named():
    from reid.stages import precise_bn_dataset
    default = load_config(ROOT / "params" / "synthetic.yml",
                          ["DATASETS.NAMES", '("Market1501", "DukeMTMC")'])
    assert precise_bn_dataset(default) == "Market1501"
    named = load_config(ROOT / "params" / "synthetic.yml",
                        ["DATASETS.NAMES", '("Market1501",)', "TEST.PRECISE_BN.DATASET",
                         "DukeMTMC"])
    assert precise_bn_dataset(named) == "DukeMTMC"


@pytest.mark.parametrize("enabled", [True, False])
def test_a_missing_precise_bn_dataset_fails_in_prepare_not_after_training(tmp_path, tiny_root,
                                                                           enabled):
    """Checked by prepare when precise-BN is on; the default recipe has it off (a dataset it
    would read is then no reason to stop)."""
    from reid.stages import prepare
    cfg = load_config(ROOT / "params" / "synthetic.yml", as_overrides({
        **TINY_DATA, "DATASETS.ROOT": str(tiny_root), "OUTPUT_DIR": str(tmp_path / "out"),
        "TEST.PRECISE_BN.ENABLED": enabled, "TEST.PRECISE_BN.DATASET": "DukeMTMC"}))
    if not enabled:
        prepare(cfg)
        assert (tmp_path / "out" / "datasets.json").is_file()
        return
    with pytest.raises(ReidError, match="dataset DukeMTMC not found under"):
        prepare(cfg)
    assert not (tmp_path / "out" / "datasets.json").exists()
