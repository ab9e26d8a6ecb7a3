"""How to evaluate, as typed values built once from the config's ``TEST.*`` keys.

:class:`EvalOptions` (``EvalOptions.from_config(cfg)``) travels whole from the
:class:`~reid.evaluation.evaluator.Evaluator` to ``evaluate_model``; re-ranking and average query
expansion are :class:`RerankOptions` and :class:`AqeOptions` (``None``: off), passed as they are to
``evaluate_features``. Their defaults are the config's (FastReID's) and the implementations'.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from reid.errors import ReidError
from reid.evaluation.roc import DEFAULT_FARS


class _FromMapping:
    """``from_mapping``: options from a plain mapping of their field names (e.g. read from a
    file); an unknown name is a ``ReidError`` naming the valid ones."""

    _name = ""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ReidError(f"{cls._name} takes the parameters {', '.join(names)}; got unknown "
                            f"{', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class RerankOptions(_FromMapping):
    """k-reciprocal re-ranking (``TEST.RERANK``): see :mod:`reid.evaluation.rerank`."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    _name = "rerank"


@dataclass(frozen=True)
class AqeOptions(_FromMapping):
    """Average query expansion (``TEST.AQE``): see :mod:`reid.evaluation.query_expansion`."""

    alpha: float = 3.0
    qe_time: int = 1
    qe_k: int = 5
    _name = "aqe"


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate: the ``TEST.*`` keys of a config (see :meth:`from_config`)."""

    metric: str = "cosine"
    flip: bool = False
    bf16: bool = False            # bfloat16 autocast while extracting features (TEST.BF16)
    max_rank: int = 50
    aqe: AqeOptions | None = None        # None: no query expansion
    rerank: RerankOptions | None = None  # None: no re-ranking
    roc: bool = False
    fars: tuple[float, ...] = DEFAULT_FARS
    protocol: str | None = None   # None: each test set's own ``eval_protocol``
    examples: bool = False        # keep best/worst rank lists and pair distances for plots
    index: str = "exact"          # or a faiss factory string: approximate evaluation
    index_params: str = ""        # its faiss search parameters ("" = by index type)
    candidates: int = 100         # each query's candidates in an approximate evaluation

    @classmethod
    def from_config(cls, cfg) -> "EvalOptions":
        test = cfg.TEST
        aqe = (AqeOptions(alpha=float(test.AQE.ALPHA), qe_time=int(test.AQE.QE_TIME),
                          qe_k=int(test.AQE.QE_K)) if test.AQE.ENABLED else None)
        rerank = (RerankOptions(k1=int(test.RERANK.K1), k2=int(test.RERANK.K2),
                                lambda_value=float(test.RERANK.LAMBDA))
                  if test.RERANK.ENABLED else None)
        return cls(metric=test.METRIC, flip=bool(test.FLIP_ENABLED), bf16=bool(test.BF16),
                   aqe=aqe, rerank=rerank,
                   roc=bool(test.ROC_ENABLED), fars=tuple(float(f) for f in test.ROC_FARS),
                   protocol=test.PROTOCOL or None, examples=bool(test.VISUALIZE),
                   index=test.INDEX.TYPE, index_params=test.INDEX.PARAMS,
                   candidates=int(test.INDEX.CANDIDATES))
