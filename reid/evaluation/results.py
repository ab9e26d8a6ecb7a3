"""What an evaluation returns, as typed values rather than dicts re-read by key.

* :class:`EvaluationResult`: one query x gallery evaluation (``evaluate_features``,
  ``StreamingEvaluation.result()``): the CMC curve, per-query AP and INP, the ROC when computed;
  :meth:`EvaluationResult.summary` gives the percent metrics a test set reports.
* :class:`SetResult`: one test set evaluated by ``evaluate_model``: those percent metrics and the
  files written for it (ROC curve, retrieval examples).
* :class:`EvaluationRun`: every test set of an :class:`~reid.evaluation.evaluator.Evaluator`;
  :attr:`EvaluationRun.metrics` is ``results.json``'s ``{"<test set>": {"Rank-1", ...}}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reid.evaluation.roc import RocResult, far_key


@dataclass
class EvaluationResult:
    """Rank metrics (and the ROC) of one query x gallery evaluation, as fractions."""

    cmc: np.ndarray            # float, length min(max_rank, CMC candidates)
    all_ap: np.ndarray         # one per valid query, in query order
    all_inp: np.ndarray
    num_queries: int
    roc: RocResult | None = None
    # Approximate evaluation (reid.evaluation.approximate): the metrics are lower bounds from
    # each query's top-``candidates``, whose recall against exact search is given here.
    candidates: int | None = None
    candidate_recall: float | None = None

    @property
    def mAP(self) -> float:  # noqa: N802 (the metric's name)
        """Mean AP over the valid queries, as a fraction."""
        return float(np.mean(self.all_ap))

    @property
    def mINP(self) -> float:  # noqa: N802
        """Mean INP over the valid queries, as a fraction."""
        return float(np.mean(self.all_inp))

    @property
    def tar_at_far(self) -> dict[float, float]:
        """``{far: tar}`` (fractions) when the ROC was computed, else empty."""
        return dict(self.roc.tar_at_far) if self.roc is not None else {}

    def summary(self) -> dict[str, float]:
        """Rank-1/5/10, mAP, mINP (and ``TAR_at_FAR_<far>``) in percent: a test set's entry
        of ``results.json``."""
        # float32 like evaluate_rank's (FastReID's) arrays: results.json keeps its exact digits.
        out = summarize(*(np.asarray(values, dtype=np.float32)
                          for values in (self.cmc, self.all_ap, self.all_inp)))
        for far, tar in self.tar_at_far.items():
            out[far_key(far)] = float(tar * 100.0)
        if self.candidate_recall is not None:
            out["candidate_recall"] = float(self.candidate_recall * 100.0)
        return out


@dataclass(frozen=True)
class SetResult:
    """One test set: its percent metrics and the files written for it."""

    metrics: dict[str, float]
    roc_files: tuple[Path, ...] = ()    # the ROC curve (.csv, .png) when written
    examples_file: Path | None = None   # retrieval examples for the visual report

    @property
    def files(self) -> list[Path]:
        return [*self.roc_files, *([self.examples_file] if self.examples_file else [])]


@dataclass(frozen=True)
class EvaluationRun:
    """Every test set of one ``Evaluator.run``, in ``DATASETS.TESTS`` order."""

    sets: dict[str, SetResult] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """``{"<test set>": {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", ...}}`` in percent:
        what ``results.json`` holds."""
        return {name: dict(result.metrics) for name, result in self.sets.items()}

    @property
    def files(self) -> list[Path]:
        """Every file written (ROC curves, retrieval examples), test set by test set."""
        return [path for result in self.sets.values() for path in result.files]


def summarize(cmc: np.ndarray, all_AP: np.ndarray, all_INP: np.ndarray) -> dict[str, float]:
    """Rank-1/5/10, mAP and mINP in percent.

    When the CMC curve is shorter than k (gallery smaller than k), Rank-k is its last value:
    with the whole gallery ranked, the top-k hit rate equals the top-G one.
    """
    cmc = np.asarray(cmc, dtype=np.float64)

    def rank(k: int) -> float:
        return float(cmc[min(k, cmc.size) - 1] * 100.0)

    return {
        "Rank-1": rank(1),
        "Rank-5": rank(5),
        "Rank-10": rank(10),
        "mAP": float(np.mean(np.asarray(all_AP, dtype=np.float64)) * 100.0),
        "mINP": float(np.mean(np.asarray(all_INP, dtype=np.float64)) * 100.0),
    }
