"""Cycle reconstruction error: L1 (pixels in [0, 1]) of the round trip back to the source domain.

v1: ``G(G(x, c_trg), c_org)`` vs ``x`` for every test target (``c_org``: the image's own labels
in its dataset's slice, with the mask vector). v2: ``G(G(x, s_trg), E(x, y_org))`` vs ``x`` with
latent-guided ``s_trg``, as the cycle loss of the paper.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from stargan.evaluation.image_metrics import l1
from stargan.evaluation.metric_accuracy import target_key
from stargan.evaluation.metrics import MetricResult, register_metric
from stargan.evaluation.tasks import EvalContext, v1_translations, v2_tasks, v2_translations


@register_metric("cycle")
def cycle_error(ctx: EvalContext) -> MetricResult:
    """Mean L1 between the input and its translation translated back."""
    sums, n = defaultdict(float), defaultdict(int)
    if ctx.kind == "v1":
        layout = ctx.model.layout
        for ds in ctx.datasets():
            di = layout.index(ds)
            for batch, outs in v1_translations(ctx, ds):
                c_org = layout.to_model_label(di, batch["label"])
                for t, fake in outs:
                    rec = ctx.model.translate(fake, c_org)
                    key = target_key(ds, t)
                    sums[key] += float(l1(rec, batch["image"]).sum())
                    n[key] += fake.size(0)
    else:
        names = ctx.model.domains.names
        for src, trg in v2_tasks(ctx):
            for batch, outs in v2_translations(ctx, src, trg, "latent", num_outs=1):
                x = batch["image"]
                with torch.no_grad():
                    rec = ctx.model.G(outs[0], ctx.model.E(x, batch["domain"]))
                key = f"latent/{names[src]}_to_{names[trg]}"
                sums[key] += float(l1(rec, x).sum())
                n[key] += x.size(0)
    res = MetricResult("cycle")
    for key in n:
        res.results[f"{key}/l1"] = sums[key] / n[key]
    if n:
        res.results["l1"] = sum(res.results.values()) / len(n)
    res.meta = {"l1_scale": "pixels in [0, 1]"}
    return res
