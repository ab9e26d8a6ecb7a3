"""One training per GPU: Prefect global concurrency limits per (machine, physical GPU)."""
from __future__ import annotations

import socket
import threading

import pytest
import torch

import tasks.environment  # noqa: F401  (Prefect reads its logging settings when it loads)
from conftest import RECIPE
from reid.config import load_config
from tasks import gpu_slots


@pytest.fixture
def two_visible_gpus(monkeypatch):
    """What a machine with GPUs 3 and 5 visible (CUDA_VISIBLE_DEVICES=3,5) reports."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")


def test_a_training_holds_the_limits_of_the_physical_gpus_it_uses(two_visible_gpus):
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    cuda = load_config(RECIPE, ["MODEL.DEVICE", "cuda"])
    assert gpu_slots.limit_names(gpu_slots.training_gpus(cuda)) == [f"reid-gpu-{host}-3"]
    assert gpu_slots.training_gpus(load_config(RECIPE, ["MODEL.DEVICE", "cuda:1"])) == [5]
    assert gpu_slots.training_gpus(cuda, nproc_per_node=2) == [3, 5]
    assert gpu_slots.training_gpus(load_config(RECIPE, ["MODEL.DEVICE", "cpu"])) == []


def test_two_trainings_on_one_gpu_take_turns(prefect_server, two_visible_gpus, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "turns-test-host")
    cfg = load_config(RECIPE, ["MODEL.DEVICE", "cuda"])
    events, first_holds = [], threading.Event()

    def training(name: str, hold: threading.Event | None) -> None:
        with gpu_slots.gpu_slots(cfg):
            events.append(f"{name} starts")
            if hold is not None:
                first_holds.set()
                hold.wait(timeout=60)  # released by the main thread after the second tried
            events.append(f"{name} ends")

    release = threading.Event()
    first = threading.Thread(target=training, args=("first", release))
    first.start()
    assert first_holds.wait(timeout=60)
    second = threading.Thread(target=training, args=("second", None))
    second.start()
    second.join(timeout=3)  # it cannot get the slot while the first training holds it
    events.append("first released")
    release.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert events == ["first starts", "first released", "first ends", "second starts",
                      "second ends"]
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("reid-gpu-turns-test-host-3")
    assert limit.limit == 1
