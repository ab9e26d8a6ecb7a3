"""retry_if_cuda_oom with a fake CUDA OOM: a retry after emptying the cache, then a call with
the inputs on the CPU; other errors pass through; the evaluator's distance blocks recover."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation import evaluator
from reid.evaluation.features import evaluate_features
from reid.evaluation.options import EvalOptions
from reid.utils.memory import is_cuda_oom, retry_if_cuda_oom, to_cpu


@pytest.fixture
def empty_cache_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


def failing(times: int, seen: list):
    """A function that runs out of CUDA memory on its first ``times`` calls."""
    def func(*args, **kwargs):
        seen.append((args, kwargs))
        if len(seen) <= times:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"
    return func


def test_success_needs_no_retry(empty_cache_calls):
    seen = []
    assert retry_if_cuda_oom(failing(0, seen))(1) == "done"
    assert len(seen) == 1 and empty_cache_calls == []


def test_one_oom_is_retried_after_emptying_the_cache(empty_cache_calls):
    seen = []
    cuda = torch.device("cuda")
    assert retry_if_cuda_oom(failing(1, seen))(3, device=cuda) == "done"
    assert len(seen) == 2 and empty_cache_calls == [1]
    assert seen[1] == ((3,), {"device": cuda})  # the same inputs the second time


def test_two_ooms_move_cuda_inputs_to_the_cpu(empty_cache_calls):
    # No GPU here: CUDA devices stand for CUDA inputs (tensors move by the same rule,
    # ``tensor.device.type == "cuda"``); CPU tensors and other values are passed as they are.
    seen = []
    cpu_tensor = torch.zeros(3)
    args = ([cpu_tensor], {"d": torch.device("cuda:1")}, "text")
    assert retry_if_cuda_oom(failing(2, seen))(*args, device=torch.device("cuda")) == "done"
    assert len(seen) == 3 and empty_cache_calls == [1]
    (items, mapping, text), kwargs = seen[2]
    assert items[0] is cpu_tensor and text == "text"
    assert mapping == {"d": torch.device("cpu")} and kwargs == {"device": torch.device("cpu")}


def test_to_cpu_walks_containers_and_named_tuples():
    from collections import namedtuple
    Pair = namedtuple("Pair", "a b")
    value = {"x": [torch.device("cuda"), (torch.device("cpu"), 5)],
             "p": Pair(torch.device("cuda:0"), "s")}
    assert to_cpu(value) == {"x": [torch.device("cpu"), (torch.device("cpu"), 5)],
                             "p": Pair(torch.device("cpu"), "s")}


def test_without_cpu_fallback_the_second_oom_is_raised(empty_cache_calls):
    seen = []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        retry_if_cuda_oom(failing(2, seen), cpu_fallback=False)(1)
    assert len(seen) == 2 and empty_cache_calls == [1]


def test_other_errors_are_not_retried(empty_cache_calls):
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        retry_if_cuda_oom(broken)()
    assert calls == [1] and empty_cache_calls == []
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert not is_cuda_oom(ValueError("CUDA out of memory"))


def test_evaluation_distance_blocks_fall_back_to_the_cpu(empty_cache_calls, monkeypatch):
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(10, 4)).astype(np.float32))
    pids = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    camids = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    monkeypatch.setattr(evaluator, "extract_features", lambda *a, **k: (feats, pids, camids))
    devices = []

    def features_on_a_full_gpu(*args, device, **kwargs):
        devices.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return evaluate_features(*args, device=device, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate_features", features_on_a_full_gpu)
    result = evaluator.evaluate_model(None, None, 3, "cuda", EvalOptions())
    assert devices == ["cuda", "cuda", "cpu"] and empty_cache_calls == [1]
    reference = evaluate_features(feats[:3], feats[3:], pids[:3], pids[3:], camids[:3],
                                  camids[3:]).summary()
    assert result.metrics == reference


def oom_once(result, seen: list):
    """Feature extraction that runs out of CUDA memory on its first call only."""
    def extract(*args, **kwargs):
        seen.append(kwargs)
        if len(seen) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return result
    return extract


def test_reid_extract_and_folder_features_retry_a_cuda_oom(empty_cache_calls, monkeypatch,
                                                           tmp_path):
    """`reid extract` (stages.extract) and the folder features behind `reid extract --folder`
    / `reid index build`: one OOM is retried after emptying the cache, and the file holds the
    features of the call that succeeded."""
    from conftest import RECIPE
    from reid import inference, stages
    from reid.config import load_config
    from reid.evaluation import extract as extract_module
    cfg = load_config(RECIPE, ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")])
    feats = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    seen: list = []
    monkeypatch.setattr(stages, "extract_features",
                        oom_once((feats, np.array([1, 2, 3]), np.array([0, 0, 1])), seen))
    monkeypatch.setattr(stages, "load_model", lambda *args: None)
    monkeypatch.setattr(stages, "build_test_loader", lambda cfg, name: (None, 1))
    out = stages.extract(cfg, "weights.pth", "SetA", tmp_path / "set-a.npz")
    assert len(seen) == 2 and empty_cache_calls == [1]
    with np.load(out["features"]) as saved:
        assert saved["features"].tolist() == feats.tolist() and saved["pids"].tolist() == [1, 2, 3]

    seen.clear()
    monkeypatch.setattr(extract_module, "extract_features", oom_once((feats, None, None), seen))
    monkeypatch.setattr(inference, "folder_loader", lambda cfg, folder, paths: None)
    folder_feats, paths = inference.folder_features(None, cfg, tmp_path, "cpu", ["a.jpg"] * 3)
    assert len(seen) == 2 and empty_cache_calls == [1, 1]
    assert folder_feats.tolist() == feats.tolist() and paths == ["a.jpg"] * 3
