"""Export a trained model for serving (ONNX) and check the exported graph against PyTorch.

The exported graph is the model's eval forward, normalisation included: its input ``images`` is
``N x 3 x H x W`` float RGB on the 0..255 scale (what the test loaders yield), its output
``features`` is ``N x D``. The batch axis is dynamic; H x W is fixed to ``INPUT.SIZE_TEST``.
Flip averaging (``TEST.FLIP_ENABLED``) is the caller's business, as it is in the evaluator.

``onnx`` / ``onnxruntime`` (and ``onnxscript`` for the default exporter) are optional: they are
imported only here, when an export runs (``pip install -e '.[export]'``). No tracking here:
``tasks/export.py`` logs the file to MLflow.
"""
from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from reid.config import CfgNode
from reid.errors import ReidError, one_line
from reid.inference import build_inference_model
from reid.utils.registry import Registry

logger = logging.getLogger(__name__)

EXPORT_FORMATS = Registry("export format")
ONNX_EXPORTERS = Registry("ONNX exporter")
INPUT_NAME = "images"
OUTPUT_NAME = "features"
BATCH_AXIS = "batch"
MIN_COSINE = 0.9999
CHECK_BATCH_SIZES = (1, 3)
# The graph is traced at batch 2: torch.export specialises a dimension traced at size 1.
TRACE_BATCH = 2
INSTALL_HINT = "pip install -e '.[export]'"


def require(module: str, purpose: str):
    """Import an optional dependency, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ReidError(f"{purpose} needs the Python package {module}: {INSTALL_HINT}") from None


def sample_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Deterministic ``batch x 3 x H x W`` float images on the 0..255 scale."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 255.0


# --------------------------------------------------------------------------- exporters
@ONNX_EXPORTERS.register(name="dynamo")
def export_with_dynamo(model: nn.Module, sample: torch.Tensor, path: Path,
                       opset: int | None) -> None:
    """torch.export-based exporter (PyTorch's default since 2.9; needs onnxscript)."""
    require("onnxscript", "the dynamo ONNX exporter (or use --exporter torchscript)")
    batch = torch.export.Dim(BATCH_AXIS)
    # external_data=False: one self-contained file (torch still splits models over 2 GB).
    torch.onnx.export(model, (sample,), str(path), dynamo=True, verbose=False,
                      external_data=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: batch},), opset_version=opset)


@ONNX_EXPORTERS.register(name="torchscript")
def export_with_torchscript(model: nn.Module, sample: torch.Tensor, path: Path,
                            opset: int | None) -> None:
    """The legacy TorchScript tracer: faster, no onnxscript, but deprecated by PyTorch."""
    with warnings.catch_warnings():
        # PyTorch warns on every call that this exporter is deprecated; the choice was explicit.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (sample,), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                          opset_version=opset or 17)


# --------------------------------------------------------------------------- check
def onnx_session(path: str | Path):
    ort = require("onnxruntime", "checking an ONNX export")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def check_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int],
               batch_sizes: Sequence[int] = CHECK_BATCH_SIZES, min_cosine: float = MIN_COSINE,
               seed: int = 0) -> dict[int, float]:
    """``{batch size: lowest cosine}`` between onnxruntime's and PyTorch's features on sample
    images; raises ReidError when one is below ``min_cosine`` (the export is not faithful)."""
    session = onnx_session(path)
    height, width = input_size
    lowest = {}
    for i, batch in enumerate(batch_sizes):
        images = sample_images(batch, height, width, seed + i)
        with torch.no_grad():
            expected = model(images).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
        if got.shape != expected.shape:
            raise ReidError(f"{path}: ONNX features have shape {got.shape} at batch {batch}, "
                            f"PyTorch's {expected.shape}")
        lowest[batch] = float(cosine_per_row(got, expected).min())
        if lowest[batch] < min_cosine:
            raise ReidError(f"{path}: ONNX features differ from PyTorch's at batch {batch} "
                            f"(cosine {lowest[batch]:.6f} < {min_cosine})")
    return lowest


# --------------------------------------------------------------------------- formats
@EXPORT_FORMATS.register(name="onnx")
def export_onnx(model: nn.Module, output: str | Path, input_size: Sequence[int],
                exporter: str = "dynamo", opset: int | None = None, check: bool = True) -> dict:
    """Write ``model`` (eval mode, on the CPU) to ``output`` as ONNX with a dynamic batch axis,
    then check it with onnxruntime at batch sizes 1 and 3."""
    export_fn = ONNX_EXPORTERS.get(exporter)
    require("onnx", "ONNX export")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    sample = sample_images(TRACE_BATCH, *input_size)
    # A temp name beside the target: a failed export or check never leaves a bad file behind.
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        export_fn(model, sample, tmp, opset)
        cosine = check_onnx(model, tmp, input_size) if check else {}
        tmp.replace(output)
    except ReidError:
        raise
    except Exception as exc:  # torch's exporters raise many types for unsupported operators
        raise ReidError(f"the {exporter} ONNX exporter failed on this model: "
                        f"{one_line(exc)[:300]} (try --exporter torchscript)") from exc
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s (%s exporter; onnxruntime vs PyTorch cosine %s)", output, exporter,
                ", ".join(f"batch {b}: {c:.6f}" for b, c in cosine.items()) or "not checked")
    return {"output": str(output), "format": "onnx", "exporter": exporter,
            "input_size": [int(v) for v in input_size], "cosine": cosine}


def export_model(cfg: CfgNode, weights: str | Path, output: str | Path, fmt: str = "onnx",
                 **options) -> dict:
    """Load ``weights`` into the model of ``cfg`` and export it for INPUT.SIZE_TEST inputs."""
    export_fn = EXPORT_FORMATS.get(fmt)
    model = build_inference_model(cfg, weights)  # strict load, eval mode, CPU
    result = export_fn(model, output, tuple(cfg.INPUT.SIZE_TEST), **options)
    return {**result, "weights": str(weights)}
