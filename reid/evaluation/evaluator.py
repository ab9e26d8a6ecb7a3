"""Evaluate a model: extract features -> streamed rank metrics (+ ROC) -> percents.

One entry point for every caller: :class:`Evaluator` reads the ``TEST.*`` options of a config
and evaluates a model on each ``DATASETS.TESTS`` set (the evaluate stage, ``reid eval`` and a
trainer eval hook use it); :func:`evaluate_model` does one test loader with explicit options.
Results are ``{"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}`` in percent, plus
``TAR_at_FAR_<far>`` when the ROC is enabled.

Under several processes every rank extracts its shard of the features (gathered on all
ranks), the main process computes the metrics and every rank returns them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from reid.errors import ReidError
from reid.evaluation.examples import ExampleCollector, write_examples
from reid.evaluation.extract import extract_features
from reid.evaluation.features import evaluate_features
from reid.evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOLS
from reid.evaluation.rank import summarize
from reid.evaluation.roc import DEFAULT_FARS, far_key, write_roc
from reid.utils import comm

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """How to evaluate: the ``TEST.*`` keys of a config (see :meth:`from_config`)."""

    metric: str = "cosine"
    flip: bool = False
    max_rank: int = 50
    aqe: dict | None = None       # dict(alpha=, qe_time=, qe_k=) or None
    rerank: dict | None = None    # dict(k1=, k2=, lambda_value=) or None
    roc: bool = False
    fars: tuple[float, ...] = DEFAULT_FARS
    protocol: str | None = None   # None: each test set's own ``eval_protocol``
    examples: bool = False        # keep best/worst rank lists and pair distances for plots

    @classmethod
    def from_config(cls, cfg) -> "EvalOptions":
        test = cfg.TEST
        aqe = (dict(alpha=float(test.AQE.ALPHA), qe_time=int(test.AQE.QE_TIME),
                    qe_k=int(test.AQE.QE_K)) if test.AQE.ENABLED else None)
        rerank = (dict(k1=int(test.RERANK.K1), k2=int(test.RERANK.K2),
                       lambda_value=float(test.RERANK.LAMBDA)) if test.RERANK.ENABLED else None)
        protocol = test.PROTOCOL or None
        fars = tuple(float(f) for f in test.ROC_FARS)
        examples = bool(test.VISUALIZE)
        return cls(metric=test.METRIC, flip=bool(test.FLIP_ENABLED), aqe=aqe, rerank=rerank,
                   roc=bool(test.ROC_ENABLED), fars=fars, protocol=protocol, examples=examples)


def evaluate_model(model: nn.Module, data_loader, num_query: int, device: torch.device | str,
                   metric: str = "cosine", flip: bool = False, max_rank: int = 50,
                   protocol: str = DEFAULT_PROTOCOL, aqe: dict | None = None,
                   rerank: dict | None = None, roc: bool = False,
                   fars: tuple[float, ...] = DEFAULT_FARS,
                   roc_path: str | Path | None = None,
                   examples_path: str | Path | None = None) -> dict[str, float]:
    """Metrics in percent on one test loader whose first ``num_query`` items are the queries.

    ``roc_path`` (a path without suffix): where the main process writes the ROC curve
    (``.csv``, and ``.png`` when matplotlib is installed) when ``roc`` is true.
    ``examples_path``: where the main process writes the retrieval examples (JSON: the best
    and worst queries' top-k, sampled pair distances; :mod:`reid.evaluation.examples`).
    """
    feats, pids, camids = extract_features(model, data_loader, device, flip=flip)
    total = len(pids)
    if not 0 < num_query < total:
        raise ReidError(f"num_query must split the {total} extracted items into queries and "
                        f"a non-empty gallery, got num_query={num_query}")

    def compute() -> dict[str, float]:
        collector = (ExampleCollector(pids[:num_query], pids[num_query:], camids[:num_query],
                                      camids[num_query:]) if examples_path is not None else None)
        metrics = evaluate_features(
            feats[:num_query], feats[num_query:], pids[:num_query], pids[num_query:],
            camids[:num_query], camids[num_query:], metric=metric, max_rank=max_rank,
            protocol=protocol, rerank=rerank, aqe=aqe, roc=roc, fars=fars,
            device=_distance_device(device),
            observe=collector.observe if collector is not None else None)
        if collector is not None:
            paths = _item_paths(data_loader)
            q_paths, g_paths = (paths[:num_query], paths[num_query:]) if paths else (None, None)
            examples = collector.report(metrics["AP"], q_paths=q_paths, g_paths=g_paths)
            write_examples({**examples, "metric": metric}, examples_path)
        return report(metrics, roc_path)

    results = _on_main_process(compute)
    logger.info("evaluation (%s distance, %s protocol%s): %s", metric, protocol,
                ", flip test" if flip else "",
                ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    return results


def _item_paths(data_loader) -> list[str] | None:
    """Image paths of the loader's items in order (None when its dataset has no records)."""
    records = getattr(getattr(data_loader, "dataset", None), "records", None)
    return [str(record[0]) for record in records] if records is not None else None


def report(metrics: dict, roc_path: str | Path | None = None) -> dict[str, float]:
    """The percent summary of ``evaluate_features``' output; writes the ROC curve if asked."""
    # float32 like evaluate_rank's (FastReID's) arrays: results.json keeps its exact digits.
    results = summarize(*(np.asarray(metrics[k], dtype=np.float32) for k in ("cmc", "AP", "INP")))
    for far, tar in metrics.get("TAR@FAR", {}).items():
        results[far_key(far)] = float(tar * 100.0)
    if "roc" in metrics and roc_path is not None:
        written = write_roc(metrics["roc"], roc_path)
        logger.info("ROC curve written to %s", ", ".join(str(p) for p in written))
    return results


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
        results = {}
        for name in self.cfg.DATASETS.TESTS:
            if name not in self._loaders:
                self._loaders[name] = self._build_loader(self.cfg, name)
            loader, num_query = self._loaders[name]
            options = self.options
            roc_path = (self.output_dir / "roc" / name
                        if options.roc and self.output_dir is not None else None)
            examples_path = (self.output_dir / "examples" / f"{name}.json"
                             if options.examples and self.output_dir is not None else None)
            results[name] = evaluate_model(
                model, loader, num_query, device, metric=options.metric, flip=options.flip,
                max_rank=options.max_rank, protocol=self.protocol_of(name), aqe=options.aqe,
                rerank=options.rerank, roc=options.roc, fars=options.fars, roc_path=roc_path,
                examples_path=examples_path)
            logger.info("%s: %s", name, ", ".join(f"{k} {v:.2f}" for k, v in results[name].items()))
        return results

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


def _on_main_process(compute: Callable[[], dict]) -> dict:
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
