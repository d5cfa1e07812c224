"""Target-domain classification accuracy of translations (the StarGAN paper's protocol).

A classifier trained on the real training images of each dataset (stage ``classifier``) labels
every translated test image. Reported per source dataset and target:

- ``<src>/<target>``: the translation shows the target label (one-hot class, hair colour, or
  the flipped attribute's new value); ``<src>_to_<other>/<class>`` for a jointly trained
  model's cross-dataset targets (e.g. CelebA faces given RaFD expressions);
- ``<src>/<target>/others_kept`` (multi-attribute sets): every other attribute kept its value;
- ``real/<dataset>``: the classifier's own accuracy on real test images (its ceiling).

v2: ``<mode>/<src>_to_<trg>`` for latent- and reference-guided outputs, and their means.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from stargan.evaluation.metrics import MetricResult, register_metric
from stargan.evaluation.tasks import EvalContext, V1Target, v1_translations, v2_dataset, v2_tasks, v2_translations


def target_hit(clf, pred: torch.Tensor, t: V1Target) -> torch.Tensor:
    """[B] bool: the prediction shows the target's named label."""
    if clf.label_kind == "onehot" or t.attr in clf.hair:
        return pred[:, t.attr] > 0.5
    return pred[:, t.attr] == t.labels[:, t.attr]


def others_kept(clf, pred: torch.Tensor, t: V1Target) -> torch.Tensor:
    """[B] bool: every label outside the target's group still matches the source."""
    group = set(clf.hair) if t.attr in clf.hair else {t.attr}
    cols = [i for i in range(pred.size(1)) if i not in group]
    if not cols:
        return torch.ones(pred.size(0), dtype=torch.bool, device=pred.device)
    return (pred[:, cols] == t.labels[:, cols]).all(1)


def real_accuracy(ctx: EvalContext, dataset: str) -> float:
    from stargan.evaluation.classifier import label_accuracy

    clf = ctx.classifier(dataset)
    total, n = 0.0, 0
    for b in ctx.batches(dataset):
        total += float(label_accuracy(clf.predict(b["image"]), b["label"], clf.label_kind).double().sum())
        n += b["image"].size(0)
    return total / max(n, 1)


def target_key(src: str, t: V1Target) -> str:
    label = t.name.split("/")[-1]
    return f"{src}/{label}" if t.own else f"{src}_to_{t.dataset}/{label}"


def _v1(ctx: EvalContext) -> MetricResult:
    hits, kept, counts = defaultdict(float), defaultdict(float), defaultdict(int)
    res = MetricResult("target_accuracy")
    for ds in ctx.datasets():
        res.results[f"real/{ds}"] = real_accuracy(ctx, ds)
        for batch, outs in v1_translations(ctx, ds):
            for t, fake in outs:
                clf = ctx.classifier(t.dataset)
                pred = clf.predict(fake)
                key = target_key(ds, t)
                hits[key] += float(target_hit(clf, pred, t).sum())
                counts[key] += fake.size(0)
                if t.own and clf.label_kind == "multi":
                    kept[key] += float(others_kept(clf, pred, t).sum())
    groups = defaultdict(list)
    for key, n in counts.items():
        acc = hits[key] / n
        res.results[key] = acc
        row = {"source": key.split("/")[0], "target": key.split("/")[1], "accuracy": acc, "images": n}
        if key in kept:
            res.results[f"{key}/others_kept"] = row["others_kept"] = kept[key] / n
        res.tables.setdefault("eval_accuracy", []).append(row)
        groups[key.split("/")[0]].append(acc)
    for g, accs in groups.items():
        res.results[f"{g}/mean"] = sum(accs) / len(accs)
    own = [res.results[k] for k in counts if "_to_" not in k.split("/")[0]]
    res.results["mean"] = sum(own) / len(own) if own else float("nan")
    res.meta = {"headline": "mean: target accuracy over every (source dataset, own-dataset target)",
                "classifiers": {d: ctx.classifier(d).metrics for d in ctx.datasets()}}
    return res


def _v2(ctx: EvalContext) -> MetricResult:
    ds = v2_dataset(ctx)
    clf = ctx.classifier(ds)
    names = ctx.model.domains.names
    res = MetricResult("target_accuracy")
    res.results[f"real/{ds}"] = real_accuracy(ctx, ds)
    for mode in ("latent", "reference"):
        accs = []
        for src, trg in v2_tasks(ctx):
            hit, n = 0.0, 0
            for _, outs in v2_translations(ctx, src, trg, mode):
                for fake in outs:
                    dom, _ = ctx.model.domains.assign(clf.predict(fake).cpu().numpy())
                    hit += float((dom == trg).sum())
                    n += fake.size(0)
            if n == 0:
                continue
            key = f"{mode}/{names[src]}_to_{names[trg]}"
            res.results[key] = hit / n
            accs.append(hit / n)
            res.tables.setdefault("eval_accuracy", []).append(
                {"source": f"{mode}/{names[src]}", "target": names[trg], "accuracy": hit / n, "images": n})
        if accs:
            res.results[f"{mode}/mean"] = sum(accs) / len(accs)
    means = [res.results[f"{m}/mean"] for m in ("latent", "reference") if f"{m}/mean" in res.results]
    res.results["mean"] = sum(means) / len(means) if means else float("nan")
    res.meta = {"classifier": clf.metrics}
    return res


@register_metric("target_accuracy", quick=True)
def target_accuracy(ctx: EvalContext) -> MetricResult:
    """Share of translations the real-data classifier assigns to the target domain."""
    return _v1(ctx) if ctx.kind == "v1" else _v2(ctx)
