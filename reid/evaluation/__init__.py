"""Evaluation: feature extraction, distances and rank metrics (CMC, mAP, mINP)."""
from reid.evaluation.distance import DISTANCE_METRICS, compute_distance
from reid.evaluation.evaluator import evaluate_model
from reid.evaluation.extract import extract_features
from reid.evaluation.rank import evaluate_rank, summarize

__all__ = ["DISTANCE_METRICS", "compute_distance", "evaluate_model", "evaluate_rank",
           "extract_features", "summarize"]
