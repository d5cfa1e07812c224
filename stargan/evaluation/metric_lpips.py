"""LPIPS diversity (StarGAN v2): mean pairwise LPIPS among the ``num_outs_per_domain`` outputs
of each source image, averaged over images, then over tasks (``latent/mean``,
``reference/mean``), with the official LPIPS v0.1 AlexNet weights. v1 is deterministic (one
output per target), so the metric is not defined for it.
"""
from __future__ import annotations

from stargan.evaluation.lpips import MIN_SIDE, load_lpips, mean_pairwise
from stargan.evaluation.metrics import MetricResult, register_metric
from stargan.evaluation.errors import MetricUnavailable
from stargan.evaluation.tasks import EvalContext, v2_tasks, v2_translations
from stargan.evaluation.weights import ALEXNET, LPIPS_ALEX_LIN, WeightsUnavailable, find_weights, fix_text


@register_metric("lpips", models=("v2",))
def lpips_diversity(ctx: EvalContext) -> MetricResult:
    """Mean pairwise LPIPS among outputs for the same source image and target domain."""
    if ctx.cfg.evaluate.num_outs_per_domain < 2:
        raise MetricUnavailable("diversity needs at least 2 outputs per source image",
                                "set evaluate.num_outs_per_domain >= 2 (official: 10)")
    paths = []
    for spec in (LPIPS_ALEX_LIN, ALEXNET):
        try:
            paths.append(find_weights(spec, ctx.cfg.evaluate, ctx.repo_root, timeout_s=ctx.cfg.download.timeout_s))
        except WeightsUnavailable as e:
            raise WeightsUnavailable(e.reason, fix_text([LPIPS_ALEX_LIN, ALEXNET])) from None
    net = load_lpips(paths[0], paths[1], ctx.device)
    names = ctx.model.domains.names
    res = MetricResult("lpips")
    for mode in ("latent", "reference"):
        vals = []
        for src, trg in v2_tasks(ctx):
            total, n = 0.0, 0
            for _, outs in v2_translations(ctx, src, trg, mode):
                total += float(mean_pairwise(net, outs).sum())
                n += outs[0].size(0)
            if n:
                key = f"{mode}/{names[src]}_to_{names[trg]}"
                res.results[key] = total / n
                vals.append(total / n)
                res.tables.setdefault("eval_lpips", []).append({"task": key, "lpips": total / n})
        if vals:
            res.results[f"{mode}/mean"] = sum(vals) / len(vals)
    res.meta = {"weights": [LPIPS_ALEX_LIN.filename, ALEXNET.filename],
                "num_outs_per_domain": ctx.cfg.evaluate.num_outs_per_domain}
    if ctx.image_size < MIN_SIDE:
        res.meta["note"] = f"{ctx.image_size} px outputs are upsampled to {MIN_SIDE} px for AlexNet"
    return res
