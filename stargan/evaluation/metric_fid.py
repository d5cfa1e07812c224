"""FID with the standard FID Inception weights (numerically pytorch-fid's), per task.

- v2 (the official ``eval.py`` protocol): for each target domain and each other source domain,
  ``num_outs_per_domain`` latent-guided (or reference-guided) outputs per source test image
  against the real images of the target domain; ``latent/mean`` and ``reference/mean`` average
  over tasks. Real images come from ``evaluate.fid_real_split`` (``test`` by default; the
  official code uses ``train``); the report states which.
- v1: per dataset and target, the translations against the dataset's real images that carry
  the target label (one-hot classes, hair colours) or all its real images (attribute flips).

Generated images are quantized to 8 bits first, as the PNG files the official code writes.
Features are accumulated in :class:`FeatureStats` (running float64 mean/covariance), and the
real statistics are computed once per (dataset, split, domain) and reused across tasks.
With fewer images than feature dimensions the covariance is singular and FID is biased
upwards; ``meta.images`` says how many were used.
"""
from __future__ import annotations

from typing import Callable

import torch

from stargan.evaluation.inception import FEATURE_DIM, load_fid_inception, to_fid_input
from stargan.evaluation.metrics import MetricResult, register_metric
from stargan.evaluation.stats import FeatureStats, fid_from_stats
from stargan.evaluation.tasks import EvalContext, v1_translations, v2_dataset, v2_domain_batches, v2_tasks, v2_translations
from stargan.evaluation.weights import FID_INCEPTION, find_weights

Extractor = Callable[[torch.Tensor], torch.Tensor]     # images in [-1, 1] -> [B, dim]


def _feed(stats: FeatureStats, extract: Extractor, images: torch.Tensor, chunk: int) -> None:
    for i in range(0, images.size(0), chunk):
        stats.update(extract(images[i:i + chunk]))


def _fid(a: FeatureStats, b: FeatureStats) -> float | None:
    return fid_from_stats(a, b) if a.n >= 2 and b.n >= 2 else None


def fid_v1(ctx: EvalContext, extractor: Callable[[str], tuple[Extractor, int]], name: str) -> MetricResult:
    res = MetricResult(name)
    split = ctx.cfg.evaluate.fid_real_split
    images, fids = {}, []
    for ds in ctx.datasets():
        extract, dim = extractor(ds)
        first = next(iter(v1_translations(ctx, ds)), None)
        if first is None:
            continue
        targets = [t for t in first[1] if t[0].own]
        real = {None: FeatureStats(dim)} | {t.attr: FeatureStats(dim) for t, _ in targets if t.sets_class}
        for b in ctx.batches(ds, split):
            feats = torch.cat([extract(b["image"][i:i + ctx.batch_size]) for i in range(0, b["image"].size(0),
                                                                                         ctx.batch_size)])
            real[None].update(feats)
            for attr, st in real.items():
                if attr is not None:
                    st.update(feats[b["label"][:, attr] > 0.5])
        fake = {}
        for _, outs in v1_translations(ctx, ds):
            for t, img in outs:
                if t.own:
                    _feed(fake.setdefault(t.name, (t, FeatureStats(dim)))[1], extract, img, ctx.batch_size)
        ds_fids = []
        for tname, (t, st) in fake.items():
            value = _fid(st, real[t.attr if t.sets_class else None])
            label = tname.split("/")[-1]
            images[f"{ds}/{label}"] = {"fake": st.n, "real": real[t.attr if t.sets_class else None].n}
            if value is None:
                continue
            res.results[f"{ds}/{label}"] = value
            ds_fids.append(value)
            res.tables.setdefault(f"eval_{name}", []).append({"task": f"{ds}/{label}", "fid": value})
        if ds_fids:
            res.results[f"{ds}/mean"] = sum(ds_fids) / len(ds_fids)
            fids += ds_fids
    if fids:
        res.results["mean"] = sum(fids) / len(fids)
    res.meta = {"real_split": split, "images": images}
    return res


def fid_v2(ctx: EvalContext, extractor: Callable[[str], tuple[Extractor, int]], name: str) -> MetricResult:
    res = MetricResult(name)
    split = ctx.cfg.evaluate.fid_real_split
    ds = v2_dataset(ctx)
    extract, dim = extractor(ds)
    names = ctx.model.domains.names
    real: dict[int, FeatureStats] = {}
    images = {}
    for trg in range(ctx.model.domains.num_domains):
        real[trg] = FeatureStats(dim)
        for b in v2_domain_batches(ctx, trg, split):
            _feed(real[trg], extract, b["image"], ctx.batch_size)
    for mode in ("latent", "reference"):
        fids = []
        for src, trg in v2_tasks(ctx):
            st = FeatureStats(dim)
            for _, outs in v2_translations(ctx, src, trg, mode):
                for img in outs:
                    _feed(st, extract, img, ctx.batch_size)
            key = f"{mode}/{names[src]}_to_{names[trg]}"
            images[key] = {"fake": st.n, "real": real[trg].n}
            value = _fid(st, real[trg])
            if value is None:
                continue
            res.results[key] = value
            fids.append(value)
            res.tables.setdefault(f"eval_{name}", []).append({"task": key, "fid": value})
        if fids:
            res.results[f"{mode}/mean"] = sum(fids) / len(fids)
    res.meta = {"real_split": split, "real_split_note": "official StarGAN v2 eval.py uses train" if split == "test"
                else "as the official StarGAN v2 eval.py", "images": images,
                "num_outs_per_domain": ctx.cfg.evaluate.num_outs_per_domain}
    return res


def inception_extractor(ctx: EvalContext) -> Callable[[str], tuple[Extractor, int]]:
    path = find_weights(FID_INCEPTION, ctx.cfg.evaluate, ctx.repo_root, timeout_s=ctx.cfg.download.timeout_s)
    net = load_fid_inception(path, ctx.device)

    def make(_: str) -> tuple[Extractor, int]:
        return (lambda x: net(to_fid_input(x))), FEATURE_DIM
    return make


@register_metric("fid")
def fid(ctx: EvalContext) -> MetricResult:
    """FID (FID Inception pool3, as pytorch-fid) of translations vs real target-domain images."""
    make = inception_extractor(ctx)
    res = (fid_v1 if ctx.kind == "v1" else fid_v2)(ctx, make, "fid")
    res.meta["weights"] = FID_INCEPTION.filename
    return res
