import logging
import random

import numpy as np
import pytest
import torch
from torch import nn

from reid.engine.launch import (init_distributed, resolve_device, seed_everything, unwrap_model,
                                wrap_ddp)
from reid.errors import ReidError


def test_cpu_stays_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_falls_back_to_cpu_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="reid.engine.launch"):
        assert resolve_device("cuda") == torch.device("cpu")
        assert resolve_device("cuda:1") == torch.device("cpu")
    assert "MODEL.DEVICE is cuda but CUDA is not available" in caplog.text


def test_a_device_name_that_is_no_device():
    with pytest.raises(ReidError, match=r"MODEL.DEVICE 'gpu0' is not a device; expected cpu, "
                                        r"cuda or cuda:N"):
        resolve_device("gpu0")


def test_single_process_launch_is_not_distributed(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() is False


def test_incomplete_torchrun_environment_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ReidError, match="distributed launch needs LOCAL_RANK, MASTER_ADDR, "
                                        "MASTER_PORT in the environment"):
        init_distributed()


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_is_reproducible_and_differs_per_rank():
    assert seed_everything(5, rank=0) == 5
    first = draws()
    seed_everything(5, rank=0)
    assert draws() == first
    assert seed_everything(5, rank=1) == 6
    assert draws() != first


def test_single_process_wrap_is_the_model_itself():
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, torch.device("cpu")) is model
    assert unwrap_model(model) is model
