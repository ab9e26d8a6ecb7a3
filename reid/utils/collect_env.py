"""The software and hardware a run used (FastReID's ``fastreid.utils.collect_env``).

``collect_env()`` gives ``[(name, value), ...]``: platform, Python, reid, PyTorch and its
CUDA / cuDNN builds, the GPUs seen, and the versions of the packages a result depends on
(torchvision, numpy, faiss, Prefect, MLflow, DVC, timm, onnxruntime). ``collect_env_info()``
is the same as a two-column table: what ``reid info --env`` prints and what every tracked
training run keeps as its ``environment.txt`` artifact. Package versions are read from the
installed metadata, so nothing heavy (Prefect, MLflow) is imported.
"""
from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import torch

NOT_INSTALLED = "not installed"

# shown name -> distribution names that provide it (the first installed one is reported)
PACKAGES = {
    "reid-toolbox": ("reid-toolbox",),
    "torchvision": ("torchvision",),
    "numpy": ("numpy",),
    "faiss": ("faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu", "faiss-cpu", "faiss"),
    "prefect": ("prefect",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "dvc": ("dvc",),
    "timm": ("timm",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
}


def package_version(shown: str, distributions: tuple[str, ...]) -> str:
    """The version of the first installed distribution, followed by its name when that is not
    ``shown`` (``1.8.0 (faiss-cpu)``), or "not installed"."""
    for name in distributions:
        try:
            found = version(name)
        except PackageNotFoundError:
            continue
        return found if name == shown else f"{found} ({name})"
    return NOT_INSTALLED


def gpu_rows() -> list[tuple[str, str]]:
    """One row per kind of GPU seen (``GPU 0,1``: its name and memory), or why there is none."""
    if not torch.cuda.is_available():
        return [("GPU available", "no")]
    groups: dict[str, list[str]] = {}
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        description = (f"{props.name} ({props.total_memory / 2 ** 30:.1f} GiB, "
                       f"compute capability {props.major}.{props.minor})")
        groups.setdefault(description, []).append(str(index))
    return [("GPU available", "yes")] + [(f"GPU {','.join(ids)}", description)
                                          for description, ids in groups.items()]


def collect_env() -> list[tuple[str, str]]:
    rows = [
        ("platform", platform.platform()),
        ("Python", sys.version.split()[0]),
        ("PyTorch", torch.__version__),
        ("PyTorch CUDA build", torch.version.cuda or "none (CPU build)"),
        ("cuDNN", str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available()
         else "not available"),
        *gpu_rows(),
        ("CPU threads (torch)", str(torch.get_num_threads())),
    ]
    rows += [(name, package_version(name, dists)) for name, dists in PACKAGES.items()]
    return rows


def collect_env_info() -> str:
    """``collect_env()`` as an aligned two-column table, one row per line."""
    rows = collect_env()
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"
