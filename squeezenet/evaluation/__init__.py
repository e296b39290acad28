"""Evaluation (top-1/top-5 over folders) and prediction."""
from .evaluate import evaluate_loader, evaluate_weights, predict

__all__ = ["evaluate_loader", "evaluate_weights", "predict"]
