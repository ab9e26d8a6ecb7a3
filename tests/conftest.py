"""Shared fixtures and helpers: a tiny synthetic dataset, tiny training overrides, isolated
MLflow/Prefect, config files written by tests, single-threaded torch; and no network for any
test (a session-wide guard plus an empty torch hub per test)."""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# Under pytest-xdist (`make test` runs two workers on two cores) every worker and every process
# it starts computes on one thread: two workers with two OpenMP threads each oversubscribe the
# cores, and spinning OpenMP threads then wait on each other (a tiny training step went from
# 0.2 s to 3 s). Set before torch is imported anywhere in the worker; children inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "params" / "synthetic.yml"


def recipe_files() -> list[Path]:
    """Every training recipe under params/ (sorted); params/sweeps/ holds sweep grids, not
    recipes."""
    params = ROOT / "params"
    return sorted(p for p in params.rglob("*.yml")
                  if p.relative_to(params).parts[0] != "sweeps")

# Small enough that a training stage takes seconds on 2 CPU cores.
TINY_DATA = {
    "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 8,
    "DATASETS.SYNTHETIC.NUM_TEST_IDS": 6,
    "DATASETS.SYNTHETIC.NUM_CAMERAS": 3,
    "DATASETS.SYNTHETIC.IMAGES_PER_ID": 6,
    "DATASETS.SYNTHETIC.NUM_DISTRACTORS": 4,
    "DATASETS.SYNTHETIC.NUM_JUNK": 3,
    "DATASETS.SYNTHETIC.SIZE": [64, 32],
}
TINY_TRAIN = {
    "MODEL.DEVICE": "cpu",
    "INPUT.SIZE_TRAIN": [64, 32],
    "INPUT.SIZE_TEST": [64, 32],
    "INPUT.PADDING": 4,
    "DATALOADER.NUM_WORKERS": 0,
    "SOLVER.MAX_EPOCH": 2,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.STEPS": [1],
    "SOLVER.WARMUP_ITERS": 2,
    "SOLVER.CHECKPOINT_PERIOD": 1,
    "SOLVER.LOG_PERIOD": 1,
    "TEST.IMS_PER_BATCH": 32,
    # The default recipe has precise-BN off (as FastReID's BoT); the tests' pipelines run it,
    # so the stage's real work stays covered.
    "TEST.PRECISE_BN.ENABLED": True,
    "TEST.PRECISE_BN.NUM_ITER": 2,
    # No retrieval examples nor visual report (matplotlib: ~5 s per evaluate stage); the
    # pipeline flow test turns it on and checks the report end to end.
    "TEST.VISUALIZE": False,
    # float32, whatever the recipe asks (params/synthetic.yml trains and extracts in bfloat16
    # where the CPU has it): the tests compare trainings to 1e-6 (resume, DDP, stage reuse),
    # and bf16 would make their figures depend on the machine's CPU.
    "SOLVER.BF16_ENABLED": False,
    "SOLVER.CHANNELS_LAST": False,
    "SOLVER.FUSED": False,
    "TEST.BF16": False,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_overrides(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += [key, str(value)]
    return out


def nested(dotted: dict) -> dict:
    """{"A.B.C": v} -> {"A": {"B": {"C": v}}}: an independent nesting of dotted config keys."""
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def as_yaml(values: dict) -> str:
    """Dotted keys as a nested YAML mapping (for recipe files written by tests)."""
    import yaml
    return yaml.safe_dump(nested(values))


def write_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flat(cfg) -> dict:
    """A config as {"A.B.C": value}."""
    return dict(cfg.flatten())


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A datasets root holding a tiny SyntheticMarket1501."""
    from reid.data.synthetic import generate_synthetic_market
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_market(root, num_train_ids=8, num_test_ids=6, num_cameras=3,
                              images_per_id=6, num_distractors=4, num_junk=3, size=(64, 32))
    return root


@pytest.fixture
def tiny_overrides(tiny_root, tmp_path) -> list[str]:
    values = {**TINY_DATA, **TINY_TRAIN, "DATASETS.ROOT": str(tiny_root),
              "OUTPUT_DIR": str(tmp_path / "out")}
    return as_overrides(values)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite in a temp dir) for the flow tests."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def no_leftover_log_handlers():
    """A command run in-process (``main([...])``) attaches its OUTPUT_DIR/log.txt and a
    console handler on the test's captured stderr to the root logger; both go with the test,
    so a later test's records never reach a file of a folder that may be gone
    (FileNotFoundError) or a closed capture stream ("--- Logging error ---" in its stderr).
    pytest's own capture handlers come and go with each phase: they are left to pytest."""
    import logging
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        if type(handler).__module__.startswith("_pytest"):
            continue
        root.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny convolutions run faster on one thread, and on a loaded 2-core machine (tests running
    in parallel) OpenMP threads wait on each other: a training step went from 0.2 s to 3 s."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ no network in any test
# A fresh clone must pass its tests on a machine with no network (DESIGN.md: no download at run
# time). Session-wide, from before the test modules are imported: in this process a socket may
# connect only to this machine (the Prefect / MLflow / HTTP servers tests start, DDP), and child
# processes (the CLI, torchrun, DVC, Prefect's server) get an empty torch home, Hugging Face's
# offline switch and an HTTP(S) proxy that leads nowhere for anything but this machine. Per test
# (`offline`, autouse): an empty torch hub cache of its own and torch hub downloads that fail.

OFFLINE_PROXY = "http://127.0.0.1:9"   # the discard port: nothing listens, connections fail
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_session_guard: dict = {}


def _is_local(host) -> bool:
    host = str(host).strip("[]")
    if host.lower() in ("localhost", "", socket.gethostname().lower()):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _local_only(connect):
    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise OSError(f"network disabled in tests: connection to {address[0]} refused")
        return connect(self, address)
    return guarded


# Measured (fresh clone, 2026-12-06): a whole run holds up to ~2.1 GB at once in the temporary
# directory (checkpoints, MLflow stores, DVC caches; passing tests' folders are deleted as they
# go, pyproject's tmp_path_retention_policy). With less free, the run used to end in a thousand
# "No space left on device" errors; now it does not start.
NEEDED_FREE_BYTES = 3 * 2**30


def check_free_space(directory: Path, needed: int = NEEDED_FREE_BYTES) -> None:
    """Refuse to start, in one line, when ``directory`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise pytest.UsageError(
            f"the test suite needs {needed / 2**30:.1f} GB free in {directory} (its runs hold up "
            f"to ~2.1 GB there at once); {free / 2**30:.1f} GB free: free some space, or point "
            "TMPDIR (or --basetemp) at a disk with room")


def pytest_configure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # once, in the process that runs the session
        basetemp = config.option.basetemp
        check_free_space(Path(basetemp).parent if basetemp else Path(tempfile.gettempdir()))
    patch = pytest.MonkeyPatch()
    torch_home = tempfile.mkdtemp(prefix="reid-tests-torch-home-")
    patch.setenv("TORCH_HOME", torch_home)
    patch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        patch.setenv(name, OFFLINE_PROXY)
    for name in ("NO_PROXY", "no_proxy"):
        patch.setenv(name, ",".join(LOCAL_HOSTS))
    patch.setattr(socket.socket, "connect", _local_only(socket.socket.connect))
    patch.setattr(socket.socket, "connect_ex", _local_only(socket.socket.connect_ex))
    _session_guard.update(patch=patch, torch_home=torch_home)


def pytest_unconfigure(config):
    if _session_guard:
        _session_guard["patch"].undo()
        shutil.rmtree(_session_guard["torch_home"], ignore_errors=True)
        _session_guard.clear()


# The optional packages the tests import are in the `test` extra. In CI (CI=true, as GitHub
# Actions and GitLab set it) a test skipped because one cannot be imported is a failure: a
# broken install must not pass as a green run with fewer tests.
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
MISSING_PACKAGE = "could not import"  # pytest.importorskip's skip reason


def fail_missing_package_skip(report) -> None:
    if IN_CI and report.skipped and MISSING_PACKAGE in str(report.longrepr):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped in CI: {reason} (install the test extra: make test)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_missing_package_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_missing_package_skip(outcome.get_result())


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory) -> Path:
    """Every test: an empty torch hub cache of its own (returned: a test that needs a cached
    weights file puts it under ``offline / "checkpoints"``) and torch hub downloads that fail."""
    import torch
    hubs = tmp_path_factory.getbasetemp() / "torch-hubs"
    hubs.mkdir(exist_ok=True)
    hub = Path(tempfile.mkdtemp(prefix="hub-", dir=hubs))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub


# ------------------------------------------------------------------ order for two workers
# `make test` runs the suite on two pytest-xdist workers, a whole module per worker
# (--dist loadfile --no-loadscope-reorder: xdist would otherwise hand out the modules with the
# most tests first), handed out in collection order. A long module handed out last runs alone
# while the other worker idles (the work-pool sweep alone took ~2 min at the end of a run), so
# the longest modules (measured: `--durations`, 2026-12-06) go first, longest first; the rest
# keep their order. Order only: every test is independent of the others.
LONGEST_MODULES = (
    "test_sweep_workers.py", "test_reliability.py", "test_elastic_launch.py",
    "test_flows_distributed.py", "test_dvc_workflow.py", "test_serve.py", "test_learning.py",
    "test_engine_resume.py", "test_flows.py", "test_stage_cache.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
