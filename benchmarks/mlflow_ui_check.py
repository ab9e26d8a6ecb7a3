"""The MLflow UI opens reid's experiment on its runs (issue 14 item 6), checked in a browser.

    python benchmarks/mlflow_ui_check.py [--output DIR] [--browser chromium]

MLflow 3's UI shows an experiment without a kind on its GenAI overview (traces, token usage);
reid marks the experiments it creates as model-training ones (``mlflow.experimentKind``,
``tasks/tracking.py``). This check makes a fresh SQLite store with one experiment made by
reid's ``Tracker`` (a ``train`` run with a metric) and one made by plain MLflow (the same run),
serves it with ``mlflow ui`` on 127.0.0.1, loads each experiment's page in a headless Chromium
(JavaScript run, DOM dumped, a screenshot written) and prints what each page shows. It passes
when reid's experiment page lists the run.

Needs a Chromium (Debian: ``apt-get install chromium``); no test runs it, because CI has no
browser. Screenshots: ``DIR/reid.png`` and ``DIR/plain.png``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.tracking import ML_VIEW, Tracker, ui_link  # noqa: E402

RUN_NAME = "train-ui-check"
LOCAL_UI = "http://127.0.0.1:5000/"  # what ui_link names for a local store
SERVER_START_S = 120
PAGE_BUDGET_MS = 20000  # the browser's virtual time for the single-page app to render


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_store(uri: str) -> tuple[dict[str, str], str]:
    """({"reid": id, "plain": id}: the same run in an experiment of each kind, reid's run)."""
    from mlflow.tracking import MlflowClient
    tracker = Tracker(uri, experiment="reid")
    run = tracker.start(RUN_NAME)
    tracker.log_metrics(run, {"total_loss": 1.5}, 1)
    tracker.end(run)
    client = MlflowClient(uri)
    plain = client.create_experiment("plain")
    other = client.create_run(plain, run_name=RUN_NAME).info.run_id
    client.log_metric(other, "total_loss", 1.5, step=1)
    client.set_terminated(other)
    return {"reid": tracker.experiment_id, "plain": plain}, run


def wait_for(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow ui exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer at {url} within {SERVER_START_S} s")


def render(browser: str, url: str, screenshot: Path) -> str:
    """The page's DOM after its JavaScript ran; a screenshot beside it."""
    common = [browser, "--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", f"--virtual-time-budget={PAGE_BUDGET_MS}",
              "--window-size=1400,900"]
    subprocess.run(common + [f"--screenshot={screenshot}", url], capture_output=True,
                   timeout=180, check=False)
    out = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=180, check=False)
    return out.stdout


def describe(dom: str) -> str:
    marks = {"lists the run": RUN_NAME in dom, "runs table": "Runs" in dom,
             "GenAI overview": "Traces" in dom or "token" in dom.lower()}
    return ", ".join(f"{name}: {'yes' if seen else 'no'}" for name, seen in marks.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("/tmp/reid-mlflow-ui-check"))
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    if shutil.which(args.browser) is None and not Path(args.browser).is_file():
        raise SystemExit(f"no browser {args.browser!r}: install Chromium (apt-get install "
                         "chromium) or pass --browser PATH")
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reid-ui-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        experiments, run = make_store(uri)
        port = free_port()
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                                   uri, "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/health", server)
            seen = {}
            for name, experiment in experiments.items():
                for query in ("", f"?{ML_VIEW}"):
                    label = f"{name}{'-ml' if query else ''}"
                    shot = args.output / f"{label}.png"
                    url = f"{base}/#/experiments/{experiment}{query}"
                    dom = render(args.browser, url, shot)
                    seen[label] = RUN_NAME in dom
                    print(f"{url}: {describe(dom)}; screenshot {shot}", flush=True)
            # The link `reid run` prints (tasks.tracking.ui_link), served here.
            page = ui_link(run, uri).rpartition(LOCAL_UI)[2]
            dom = render(args.browser, f"{base}/{page}", args.output / "run-link.png")
            seen["link"] = RUN_NAME in dom
            print(f"reid run's link {base}/{page}: shows the run: "
                  f"{'yes' if seen['link'] else 'no'}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    if not seen["link"]:
        raise SystemExit("FAIL: the run link reid prints does not show the run")
    if not seen["reid-ml"]:
        raise SystemExit(f"FAIL: reid's experiment page with ?{ML_VIEW} does not list "
                         "its run")
    print(f"OK: reid's experiment link (?{ML_VIEW}) opens on its runs; without it the UI "
          f"{'also lists them' if seen['reid'] else 'opens on its GenAI overview'}")


if __name__ == "__main__":
    main()
