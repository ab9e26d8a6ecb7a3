"""Evaluation: feature extraction, distances, exact rank metrics (CMC, mAP, mINP), protocols,
verification (TAR@FAR, ROC), re-ranking and query expansion, streamed at any size."""
from reid.evaluation.distance import DISTANCE_METRICS, GalleryDistances, compute_distance
from reid.evaluation.evaluator import Evaluator, evaluate_model
from reid.evaluation.extract import extract_features
from reid.evaluation.features import evaluate_features
from reid.evaluation.options import AqeOptions, EvalOptions, RerankOptions
from reid.evaluation.protocols import PROTOCOLS
from reid.evaluation.rank import evaluate_rank
from reid.evaluation.results import EvaluationResult, EvaluationRun, SetResult, summarize
from reid.evaluation.roc import DEFAULT_FARS, write_roc

__all__ = ["DEFAULT_FARS", "DISTANCE_METRICS", "AqeOptions", "EvalOptions", "EvaluationResult",
           "EvaluationRun", "Evaluator", "GalleryDistances", "PROTOCOLS", "RerankOptions",
           "SetResult", "compute_distance", "evaluate_features", "evaluate_model",
           "evaluate_rank", "extract_features", "summarize", "write_roc"]
