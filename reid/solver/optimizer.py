"""Optimizers built from SOLVER.*: one parameter group per parameter, optimizer by name.

Each parameter gets its own group so that its learning rate and weight decay can follow
its role (head or backbone, normalisation layer, bias or weight) while the LR scheduler still
scales every group by the same schedule.

Weight decay, as in FastReID 1.4: WEIGHT_DECAY by default, WEIGHT_DECAY_NORM for the
parameters of normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm, ...), and
WEIGHT_DECAY_BIAS for every bias (normalisation layers' biases included).

Every ``torch.optim`` optimizer is registered under its class name, as FastReID builds any of
them by name: SGD with MOMENTUM and NESTEROV, the others with their own defaults besides the
LR and weight decay of each group. A user registers another with ``OPTIMIZER_REGISTRY``.
"""
from __future__ import annotations

import inspect
import logging
from typing import Callable

import torch
from torch import nn

from reid.config.node import CfgNode
from reid.engine.launch import unwrap_model
from reid.errors import ReidError
from reid.utils.registry import Registry

logger = logging.getLogger(__name__)

# name -> builder(param_groups, cfg) -> torch.optim.Optimizer
OPTIMIZER_REGISTRY = Registry("optimizer (SOLVER.OPT)")

# torch.optim optimizers that cannot train a model with this trainer, and why.
UNSUITABLE = {
    "LBFGS": "it needs a closure re-evaluating the loss at every step and a single parameter "
             "group",
    "SparseAdam": "it only handles sparse gradients (nn.Embedding(sparse=True)), not a "
                  "network's dense ones",
}

HEADS_PREFIX = "heads"

# Modules whose parameters take SOLVER.WEIGHT_DECAY_NORM (_NormBase: batch and instance norms).
NORM_MODULE_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                     nn.LocalResponseNorm)


def is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names (as ``named_parameters`` gives them) of the normalisation layers' parameters."""
    return {f"{module_name}.{param_name}" if module_name else param_name
            for module_name, module in model.named_modules()
            if isinstance(module, NORM_MODULE_TYPES)
            for param_name, _ in module.named_parameters(recurse=False)}


def param_group(name: str, param: nn.Parameter, solver: CfgNode, is_norm: bool = False) -> dict:
    """The optimizer group of one parameter: its LR and weight decay from its name and
    whether it belongs to a normalisation layer."""
    lr = solver.BASE_LR
    weight_decay = solver.WEIGHT_DECAY_NORM if is_norm else solver.WEIGHT_DECAY
    if name.startswith(HEADS_PREFIX):
        lr *= solver.HEADS_LR_FACTOR
    if is_bias(name):
        lr *= solver.BIAS_LR_FACTOR
        weight_decay = solver.WEIGHT_DECAY_BIAS
    # "name" is extra metadata; torch optimizers keep unknown group keys as they are.
    return {"params": [param], "lr": lr, "weight_decay": weight_decay, "name": name}


def build_param_groups(cfg: CfgNode, model: nn.Module) -> list[dict]:
    """One group per trainable parameter (``requires_grad`` False ones are left out)."""
    model = unwrap_model(model)
    norms = norm_parameter_names(model)
    return [param_group(name, param, cfg.SOLVER, is_norm=name in norms)
            for name, param in model.named_parameters() if param.requires_grad]


def implementation(cfg: CfgNode, cls: type[torch.optim.Optimizer]) -> dict:
    """The optimizer's keyword for SOLVER.FUSED: ``{"fused": True}``, or none when off."""
    if not cfg.SOLVER.FUSED:
        return {}
    if "fused" not in inspect.signature(cls).parameters:
        fused = sorted(name for name, other in torch_optimizers().items()
                       if "fused" in inspect.signature(other).parameters)
        raise ReidError(f"SOLVER.FUSED True: SOLVER.OPT {cfg.SOLVER.OPT} has no fused "
                        f"implementation; set SOLVER.FUSED False or use one of "
                        f"{', '.join(fused)}")
    return {"fused": True}


@OPTIMIZER_REGISTRY.register(name="Adam")
def build_adam(groups: list[dict], cfg: CfgNode) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.SOLVER.BASE_LR,
                            **implementation(cfg, torch.optim.Adam))


@OPTIMIZER_REGISTRY.register(name="AdamW")
def build_adamw(groups: list[dict], cfg: CfgNode) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR,
                             **implementation(cfg, torch.optim.AdamW))


@OPTIMIZER_REGISTRY.register(name="SGD")
def build_sgd(groups: list[dict], cfg: CfgNode) -> torch.optim.Optimizer:
    solver = cfg.SOLVER
    if solver.NESTEROV and solver.MOMENTUM <= 0:
        raise ReidError(f"SOLVER.NESTEROV True needs SOLVER.MOMENTUM > 0 (got {solver.MOMENTUM}); "
                        "set SOLVER.NESTEROV False or give a momentum")
    return torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM,
                           nesterov=solver.NESTEROV, **implementation(cfg, torch.optim.SGD))


def torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class that ``torch.optim`` exports, by name."""
    return {name: cls for name, cls in vars(torch.optim).items()
            if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)
            and cls is not torch.optim.Optimizer}


def generic_builder(name: str, cls: type[torch.optim.Optimizer]) -> Callable:
    """A builder passing BASE_LR (each group's own LR and weight decay are in the groups)."""
    def build(groups: list[dict], cfg: CfgNode) -> torch.optim.Optimizer:
        if name in UNSUITABLE:
            raise ReidError(f"SOLVER.OPT {name} cannot train a re-id model: {UNSUITABLE[name]}")
        takes_decay = "weight_decay" in inspect.signature(cls).parameters
        if not takes_decay and cfg.SOLVER.WEIGHT_DECAY > 0:
            logger.warning("SOLVER.OPT %s has no weight decay: SOLVER.WEIGHT_DECAY* are not "
                           "applied", name)
        try:
            return cls(groups, lr=cfg.SOLVER.BASE_LR, **implementation(cfg, cls))
        except (ValueError, TypeError) as exc:  # e.g. Muon: 2-D parameters only
            raise ReidError(f"SOLVER.OPT {name} cannot optimise this model: {exc}") from exc

    build.__name__ = f"build_{name.lower()}"
    return build


for _name, _cls in torch_optimizers().items():
    if _name not in OPTIMIZER_REGISTRY.names():
        OPTIMIZER_REGISTRY.register(generic_builder(_name, _cls), name=_name)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """The SOLVER.OPT optimizer over ``model``'s trainable parameters."""
    builder: Callable = OPTIMIZER_REGISTRY.get(cfg.SOLVER.OPT)
    groups = build_param_groups(cfg, model)
    if not groups:
        raise ReidError("the model has no trainable parameters (all have requires_grad False); "
                        "check MODEL.FREEZE_LAYERS and the model's construction")
    return builder(groups, cfg)
