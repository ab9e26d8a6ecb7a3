"""The stage table: every stage declared once. The CLI (``reid/commands.py``), the Prefect
tasks (``tasks/pipeline_tasks.py``), the flows, the tests and dvc.yaml's test read it.

A stage's ``name`` is its MLflow run, DVC stage and Prefect task name; its command is the same
name with dashes (``reid precise-bn``). Its library function and its tracked adapter are
named ``module:function`` and imported when used: reading the table (``reid --help``) loads
neither torch nor MLflow, and reid/ never imports tasks/. Adding a stage is one entry here
plus its function (``register_stage`` for one defined elsewhere).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Union

FINAL_CHECKPOINT = "model_final.pth"
PRECISE_BN_CHECKPOINT = "model_precise_bn.pth"
BEST_CHECKPOINT = "model_best.pth"  # weights of the best periodic evaluation (TEST.BEST_METRIC)
BEST_WEIGHTS = (PRECISE_BN_CHECKPOINT, FINAL_CHECKPOINT)  # what to evaluate or export

Reference = Union[str, Callable]  # "module:function", or the function itself


def resolve(reference: Reference) -> Callable:
    if callable(reference):
        return reference
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Stage:
    name: str
    function: Reference  # the library function: (cfg, **inputs) -> result dict
    help: str
    inputs: tuple[str, ...] = ()  # what the command passes on: weights, resume, register, ...
    default_weights: tuple[str, ...] = ()  # OUTPUT_DIR files tried when --weights is absent
    # Called as adapter(stage, cfg, tracker, parent_id, **inputs); the default logs the run's
    # config, data version, and the result's ``metrics`` and ``files``.
    tracked: Reference = "tasks.tracked:tracked_stage"
    aliases: tuple[str, ...] = ()  # older command spellings still accepted

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    def run(self, cfg, *args, **kwargs) -> dict:
        return resolve(self.function)(cfg, *args, **kwargs)

    def adapter(self) -> Callable[..., dict]:
        return resolve(self.tracked)


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to the table: ``reid <stage.command>`` and its tracked run follow."""
    if stage.name in STAGES:
        raise ValueError(f"stage {stage.name!r} is declared twice")
    STAGES[stage.name] = stage
    return stage


for _stage in (
    Stage("prepare", "reid.stages:prepare",
          "check the datasets and their images; generate the synthetic one"),
    Stage("train", "reid.stages:train", "train a model", inputs=("resume",),
          tracked="tasks.tracked:train"),
    Stage("distill", "reid.stages:distill", "train a student with knowledge distillation",
          inputs=("resume",), tracked="tasks.tracked:train"),
    Stage("precise_bn", "reid.stages:precise_bn", "recompute BatchNorm statistics",
          inputs=("weights",), default_weights=(FINAL_CHECKPOINT,),
          tracked="tasks.tracked:precise_bn"),
    Stage("evaluate", "reid.stages:evaluate", "evaluate on DATASETS.TESTS; writes results.json",
          inputs=("weights", "register"), default_weights=BEST_WEIGHTS,
          tracked="tasks.tracked:evaluate", aliases=("eval",)),
    Stage("export", "reid.stages:export", "export a model for serving (ONNX, checked against "
          "PyTorch); logs the file to MLflow", inputs=("weights", "output", "format", "exporter"),
          default_weights=BEST_WEIGHTS, tracked="tasks.export:export"),
):
    register_stage(_stage)

# The pipeline, in order: flows/pipeline.py runs these stages and dvc.yaml declares them.
PIPELINE = ("prepare", "train", "precise_bn", "evaluate")
