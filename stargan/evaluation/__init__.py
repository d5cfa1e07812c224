"""Evaluation: the papers' metrics (classification accuracy, FID, LPIPS) plus synthetic ground
truth, each a registered metric (``metrics.register_metric``) on shared streaming statistics."""
from stargan.evaluation.errors import MetricUnavailable
from stargan.evaluation.evaluate import evaluate_checkpoint, evaluate_model, quick_objective
from stargan.evaluation.metrics import calc_metric, list_metrics, register_metric

__all__ = ["MetricUnavailable", "calc_metric", "evaluate_checkpoint", "evaluate_model", "list_metrics",
           "quick_objective", "register_metric"]
