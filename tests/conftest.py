"""Shared fixtures and helpers: a tiny synthetic dataset, tiny training overrides, isolated
MLflow/Prefect, config files written by tests, single-threaded torch, an offline torch hub."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "params" / "synthetic.yml"

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
    "TEST.PRECISE_BN.NUM_ITER": 2,
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


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """An empty torch hub cache (returned) and downloads that fail: no test touches the network."""
    import torch
    from reid.modeling.backbones import pretrained
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(pretrained, "download", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub
