"""What one forward pass costs, per operator (FastReID's ``fastreid.utils.analysis``).

- FLOPs from ``torch.utils.flop_counter.FlopCounterMode``: convolutions, matrix products and
  attention, a multiply-add counted as 2 FLOPs (normalisation, activations and pooling are
  not counted, as in most published GFLOPs).
- Activations as fvcore / detectron2 count them: the number of output elements of the same
  operators (convolutions, matrix products, attention), a proxy for the memory a forward
  pass writes and for its speed on memory-bound hardware.

``flop_count_operators`` (GFLOPs) and ``activation_count_operators`` (millions) give them by
operator name as FastReID does; ``count_operators`` gives both exact counts from one pass.
The model runs as it is (call ``model.eval()`` first for inference numbers), without
gradients.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

# Operators whose outputs are counted as activations (fvcore: conv, matmul, linear, einsum).
ACTIVATION_OPERATORS = {aten.convolution, aten._convolution, aten.mm, aten.addmm, aten.bmm,
                        aten.baddbmm, aten._scaled_dot_product_flash_attention,
                        aten._scaled_dot_product_efficient_attention,
                        aten._scaled_dot_product_cudnn_attention,
                        aten._scaled_dot_product_flash_attention_for_cpu}


def operator_name(op: Any) -> str:
    """``aten.convolution.default`` -> ``convolution``."""
    packet = getattr(op, "overloadpacket", op)
    return str(packet).split(".")[-1]


class ActivationCounter(TorchDispatchMode):
    """Counts the output elements of ``ACTIVATION_OPERATORS`` by operator name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in ACTIVATION_OPERATORS:
            first = out[0] if isinstance(out, (tuple, list)) else out  # attention: its output
            self.counts[operator_name(func)] += first.numel()
        return out


@dataclass
class OperatorCounts:
    """FLOPs and activations of one forward pass, by operator name."""
    flops: dict[str, int] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def total_activations(self) -> int:
        return sum(self.activations.values())


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def count_operators(model: nn.Module, inputs: Any) -> tuple[OperatorCounts, Any]:
    """(FLOPs and activations of ``model(inputs)``, its output); ``inputs`` is one argument
    or a tuple of arguments."""
    flop_counter = FlopCounterMode(display=False)
    activation_counter = ActivationCounter()
    with torch.no_grad(), flop_counter, activation_counter:
        output = _call(model, inputs)
    flops: Counter[str] = Counter()
    for op, count in flop_counter.get_flop_counts().get("Global", {}).items():
        flops[operator_name(op)] += int(count)
    return OperatorCounts(dict(flops), dict(activation_counter.counts)), output


def flop_count_operators(model: nn.Module, inputs: Any) -> dict[str, float]:
    """GFLOPs of ``model(inputs)`` by operator name (FastReID / detectron2 units)."""
    counts, _ = count_operators(model, inputs)
    return {name: value / 1e9 for name, value in counts.flops.items()}


def activation_count_operators(model: nn.Module, inputs: Any) -> dict[str, float]:
    """Millions of activations of ``model(inputs)`` by operator name (FastReID units)."""
    counts, _ = count_operators(model, inputs)
    return {name: value / 1e6 for name, value in counts.activations.items()}


def parameter_count(model: nn.Module) -> Counter[str]:
    """Parameters of ``model`` under every name prefix (``""`` = all, ``"0"`` = the first
    module, ``"0.weight"`` = one parameter), as fvcore counts them."""
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():
        parts = name.split(".")
        for depth in range(len(parts) + 1):
            counts[".".join(parts[:depth])] += param.numel()
    return counts
