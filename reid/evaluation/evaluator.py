"""Evaluate a model: extract features -> streamed rank metrics (+ ROC) -> percents.

One entry point for every caller: :class:`Evaluator` reads the ``TEST.*`` options of a config
once (:meth:`EvalOptions.from_config`) and evaluates a model on each ``DATASETS.TESTS`` set (the
evaluate stage, ``reid eval`` and a trainer eval hook use it); :func:`evaluate_model` does one
test loader with explicit :class:`EvalOptions`. A test set's metrics are
``{"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}`` in percent, plus ``TAR_at_FAR_<far>`` when
the ROC is enabled (:class:`~reid.evaluation.results.SetResult`, with the files written).

Under several processes every rank extracts its shard of the features (gathered on all
ranks), the main process computes the metrics and every rank returns them.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from reid.errors import ReidError
from reid.evaluation.examples import ExampleCollector, write_examples
from reid.evaluation.extract import extract_features
from reid.evaluation.features import EXACT, evaluate_features
from reid.evaluation.options import EvalOptions
from reid.evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOLS
from reid.evaluation.results import EvaluationRun, SetResult
from reid.evaluation.roc import write_roc
from reid.utils import comm
from reid.utils.memory import retry_if_cuda_oom

logger = logging.getLogger(__name__)

__all__ = ["EvalOptions", "Evaluator", "evaluate_model"]


def evaluate_model(model: nn.Module, data_loader, num_query: int, device: torch.device | str,
                   options: EvalOptions = EvalOptions(),
                   roc_path: str | Path | None = None,
                   examples_path: str | Path | None = None) -> SetResult:
    """Metrics in percent on one test loader whose first ``num_query`` items are the queries.

    ``options.protocol`` None means the Market protocol. ``roc_path`` (a path without suffix):
    where the main process writes the ROC curve (``.csv``, and ``.png`` when matplotlib is
    installed) when ``options.roc`` is true. ``examples_path``: where the main process writes
    the retrieval examples (JSON: the best and worst queries' top-k, sampled pair distances;
    :mod:`reid.evaluation.examples`). Every rank returns the main process's result.
    """
    protocol = options.protocol or DEFAULT_PROTOCOL
    # A CUDA OOM here is often fragmentation left by training: retried after emptying the
    # cache (the model cannot leave the GPU, so no CPU fallback).
    feats, pids, camids = retry_if_cuda_oom(extract_features, cpu_fallback=False)(
        model, data_loader, device, flip=options.flip, bf16=options.bf16)
    total = len(pids)
    if not 0 < num_query < total:
        raise ReidError(f"num_query must split the {total} extracted items into queries and "
                        f"a non-empty gallery, got num_query={num_query}")

    def features_result(distance_device: torch.device):
        """The metrics, and the examples collected on the way (afresh on every try)."""
        # Examples need whole rows of distances, which an approximate evaluation never has.
        collector = (ExampleCollector(pids[:num_query], pids[num_query:], camids[:num_query],
                                      camids[num_query:])
                     if examples_path is not None and options.index == EXACT else None)
        result = evaluate_features(
            feats[:num_query], feats[num_query:], pids[:num_query], pids[num_query:],
            camids[:num_query], camids[num_query:], metric=options.metric,
            max_rank=options.max_rank, protocol=protocol, rerank=options.rerank,
            aqe=options.aqe, roc=options.roc, fars=options.fars, device=distance_device,
            observe=collector.observe if collector is not None else None,
            index=options.index, candidates=options.candidates,
            index_params=options.index_params or None)
        return result, collector

    def compute() -> SetResult:
        # Distance blocks out of GPU memory: retried after emptying the cache, then on the CPU.
        result, collector = retry_if_cuda_oom(features_result)(_distance_device(device))
        examples_file = None
        if collector is not None:
            paths = _item_paths(data_loader)
            q_paths, g_paths = (paths[:num_query], paths[num_query:]) if paths else (None, None)
            examples = collector.report(result.all_ap, q_paths=q_paths, g_paths=g_paths)
            examples_file = write_examples({**examples, "metric": options.metric}, examples_path)
        roc_files: tuple[Path, ...] = ()
        if result.roc is not None and roc_path is not None:
            roc_files = tuple(write_roc(result.roc, roc_path))
            logger.info("ROC curve written to %s", ", ".join(str(p) for p in roc_files))
        return SetResult(result.summary(), roc_files=roc_files, examples_file=examples_file)

    set_result = _on_main_process(compute)
    logger.info("evaluation (%s distance, %s protocol%s): %s", options.metric, protocol,
                ", flip test" if options.flip else "",
                ", ".join(f"{k} {v:.2f}" for k, v in set_result.metrics.items()))
    return set_result


def _item_paths(data_loader) -> list[str] | None:
    """Image paths of the loader's items in order (None when its dataset has no records)."""
    records = getattr(getattr(data_loader, "dataset", None), "records", None)
    return [str(record[0]) for record in records] if records is not None else None


class Evaluator:
    """Evaluates models on every ``DATASETS.TESTS`` set of ``cfg`` with its ``TEST.*`` options.

    ``build_loader(cfg, name) -> (loader, num_query)`` defaults to the data layer's
    ``build_test_loader``; loaders are built once and reused across ``evaluate`` calls (a
    trainer hook evaluates the same sets many times). ROC curves go to
    ``output_dir/roc/<test set>.csv|png``, retrieval examples (unless TEST.VISUALIZE is false)
    to ``output_dir/examples/<test set>.json``.
    """

    def __init__(self, cfg, output_dir: str | Path | None = None,
                 build_loader: Callable | None = None) -> None:
        self.cfg = cfg
        self.options = EvalOptions.from_config(cfg)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if build_loader is None:
            from reid.data.build import build_test_loader as build_loader
        self._build_loader = build_loader
        self._loaders: dict[str, tuple] = {}

    def evaluate(self, model: nn.Module, device: torch.device | str) -> dict[str, dict[str, float]]:
        """``{"<test set>": {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", ...}}`` in percent
        (``results.json``): :meth:`run`'s ``metrics``."""
        return self.run(model, device).metrics

    def run(self, model: nn.Module, device: torch.device | str) -> EvaluationRun:
        """Every test set's :class:`~reid.evaluation.results.SetResult` (metrics and the files
        written), in ``DATASETS.TESTS`` order."""
        sets = {}
        for name in self.cfg.DATASETS.TESTS:
            if name not in self._loaders:
                self._loaders[name] = self._build_loader(self.cfg, name)
            loader, num_query = self._loaders[name]
            options = replace(self.options, protocol=self.protocol_of(name))
            roc_path = (self.output_dir / "roc" / name
                        if options.roc and self.output_dir is not None else None)
            examples_path = (self.output_dir / "examples" / f"{name}.json"
                             if options.examples and self.output_dir is not None else None)
            sets[name] = evaluate_model(model, loader, num_query, device, options,
                                        roc_path=roc_path, examples_path=examples_path)
            logger.info("%s: %s", name,
                        ", ".join(f"{k} {v:.2f}" for k, v in sets[name].metrics.items()))
        return EvaluationRun(sets)

    def protocol_of(self, name: str) -> str:
        """``TEST.PROTOCOL`` when set, else the dataset class's ``eval_protocol``."""
        if self.options.protocol:
            return self.options.protocol
        from reid.data.datasets import DATASET_REGISTRY

        dataset = DATASET_REGISTRY.get(name) if name in DATASET_REGISTRY else None
        protocol = getattr(dataset, "eval_protocol", DEFAULT_PROTOCOL)
        PROTOCOLS.get(protocol)  # a dataset naming an unknown protocol fails here, clearly
        return protocol


def _distance_device(device: torch.device | str) -> torch.device:
    """Distances go where the model ran when that is a GPU; CPU otherwise."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def _on_main_process(compute: Callable[[], SetResult]) -> SetResult:
    """Run ``compute`` on the main process only; every rank returns its result (or its error)."""
    if comm.get_world_size() == 1:
        return compute()
    outcome: tuple[str, object] | None = None
    if comm.is_main_process():
        try:
            outcome = ("ok", compute())
        except ReidError as exc:
            outcome = ("error", str(exc))
        except Exception as exc:  # other ranks must not wait forever for a crashed rank 0
            comm.all_gather(("error", f"evaluation failed on the main process: {exc}"))
            raise
    status, value = comm.all_gather(outcome)[0]
    if status == "error":
        raise ReidError(str(value))
    return value  # type: ignore[return-value]
