"""Evaluation (top-1/top-5 over folders) and prediction."""
from .evaluate import evaluate, evaluate_weights, predict

__all__ = ["evaluate", "evaluate_weights", "predict"]
