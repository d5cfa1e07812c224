"""``fid_classifier_features``: the same Fréchet distance, in our own classifier's feature space.

Not comparable with published FIDs (other network, other data), but it needs no download, so
it is always there offline, and it still tracks whether translations match the statistics of
real target-domain images as this project's classifier sees them. Same tasks as ``fid``.
"""
from __future__ import annotations

from stargan.evaluation.inception import to_fid_input
from stargan.evaluation.metric_fid import fid_v1, fid_v2
from stargan.evaluation.metrics import MetricResult, register_metric
from stargan.evaluation.tasks import EvalContext


@register_metric("fid_classifier_features")
def fid_classifier_features(ctx: EvalContext) -> MetricResult:
    """FID on the attribute classifier's penultimate (global-pooled) features; no download."""
    def make(ds: str):
        clf = ctx.classifier(ds)
        return (lambda x: clf.features(to_fid_input(x) * 2 - 1)), clf.net.feature_dim

    res = (fid_v1 if ctx.kind == "v1" else fid_v2)(ctx, make, "fid_classifier_features")
    res.meta["features"] = "attribute classifier penultimate layer (models/classifier/<dataset>.pt)"
    return res
