"""Target-domain classification accuracy of translations (the StarGAN paper's protocol).

A classifier trained on the real training images of each dataset (stage ``classifier``) labels
every translated test image. Reported per source dataset and target:

- ``<src>/<target>``: the translation shows the target label (one-hot class, hair colour, or
  the flipped attribute's new value); ``<src>_to_<other>/<class>`` for a jointly trained
  model's cross-dataset targets (e.g. CelebA faces given RaFD expressions);
- ``<src>/<target>/others_kept`` (multi-attribute sets): every other attribute kept its value;
- ``real/<dataset>``: the classifier's own accuracy on real test images (its ceiling), and per
  label ``real/<dataset>/<label>/accuracy`` and ``.../balanced_accuracy``;
- ``<key>/judge_accuracy``, ``<key>/judge_balanced_accuracy`` next to every target: the judge on
  real images of the target's label (stargan/evaluation/judge.py); on synthetic data also
  ``<key>/judge_truth_accuracy``: the target accuracy of the *true* counterfactuals, the score of
  a perfect generator (for RaFD-like faces given CelebA attributes, whose other CelebA labels are
  unknown, the true face with only the scored label changed). Real images of a dataset cannot tell
  whether its judge reads its labels on another dataset's faces (a flips-only RaFD-like judge called
  true "sad" CelebA-like faces sad 0.59 of the time while scoring 1.0 on its own test set); this
  can. The eval.json section
  ``judge`` says whether each target accuracy is meaningful (``judge_ok``: both scores >=
  ``evaluate.judge_min_accuracy``) and lists those that are not.

v2: ``<mode>/<src>_to_<trg>`` for latent- and reference-guided outputs, and their means; the judge
is scored per domain (the domain the classifier's labels are assigned to vs the true one).
"""
from __future__ import annotations

from collections import defaultdict

import torch

from stargan.evaluation.errors import MetricUnavailable
from stargan.evaluation.judge import MEASURE, TRUTH_MEASURE, LabelCounts, domain_onehot, verdict
from stargan.evaluation.metrics import MetricResult, register_metric
from stargan.evaluation.tasks import (EvalContext, V1Target, ground_truth, render_floor, v1_judge_truth, v1_translations,
                                      v2_dataset, v2_tasks, v2_translations)


def target_hit(clf, pred: torch.Tensor, t: V1Target) -> torch.Tensor:
    """[B] bool: the prediction shows the target's named label."""
    if clf.label_kind == "onehot" or t.attr in clf.hair:
        return pred[:, t.attr] > 0.5
    return pred[:, t.attr] == t.labels[:, t.attr]


def others_kept(clf, pred: torch.Tensor, t: V1Target) -> torch.Tensor:
    """[B] bool: every label outside the target's group still matches the source. The hair colour
    is checked only on faces that have exactly one of the group's colours: the judge always names
    one, so a real face with none listed (grey, bald) would otherwise never count as kept."""
    group = set(clf.hair) if t.attr in clf.hair else {t.attr}
    cols = [i for i in range(pred.size(1)) if i not in group]
    if not cols:
        return torch.ones(pred.size(0), dtype=torch.bool, device=pred.device)
    judged = clf.judged_pairs(t.labels).to(pred.device)
    return ((pred[:, cols] == t.labels[:, cols]) | ~judged[:, cols]).all(1)


def real_scores(ctx: EvalContext, dataset: str) -> tuple[float, dict[str, dict]]:
    """The judge on the real test images of ``dataset``: its accuracy, and per label its scores."""
    from stargan.evaluation.classifier import label_accuracy

    clf = ctx.classifier(dataset)
    total, n, counts = 0.0, 0, LabelCounts(list(clf.label_names))
    for b in ctx.batches(dataset):
        pred = clf.predict(b["image"])
        total += float(label_accuracy(pred, b["label"], clf.label_kind).double().sum())
        counts.add(pred, b["label"], clf.judged_pairs(b["label"]))
        n += b["image"].size(0)
    return total / max(n, 1), counts.scores()


def real_domain_scores(ctx: EvalContext, dataset: str) -> dict[str, dict]:
    """v2: per domain, the judge's domain (its predicted labels through the model's domain map)
    against the true one on the real test images that belong to a domain."""
    clf, domains = ctx.classifier(dataset), ctx.model.domains
    counts = LabelCounts(list(domains.names))
    for b in ctx.batches(dataset):
        true, _ = domains.assign(b["label"].cpu().numpy())
        said, _ = domains.assign(clf.predict(b["image"]).cpu().numpy())
        judged = torch.as_tensor(true >= 0).unsqueeze(1).expand(-1, domains.num_domains)
        counts.add(domain_onehot(said, domains.num_domains), domain_onehot(true, domains.num_domains), judged)
    return counts.scores()


def _report_real(res: MetricResult, dataset: str, scores: dict[str, dict]) -> None:
    for label, sc in scores.items():
        for k in ("accuracy", "balanced_accuracy"):
            if sc[k] is not None:
                res.results[f"real/{dataset}/{label}/{k}"] = sc[k]


def _judge(res: MetricResult, key: str, score: dict | None, row: dict, threshold: float, ok: dict,
           on_truth: float | None = None) -> None:
    """The judge's scores on the target's label next to the target accuracy (results and table row);
    ``on_truth``: its target accuracy on the true faces of the target (synthetic data,
    ``tasks.v1_judge_truth``), which must also reach the threshold for ``judge_ok``."""
    acc, bal, ok[key] = verdict(score, threshold)
    row.update(judge_accuracy=acc, judge_balanced_accuracy=bal)
    if acc is not None:
        res.results[f"{key}/judge_accuracy"] = acc
    if bal is not None:
        res.results[f"{key}/{MEASURE}"] = bal
    if on_truth is not None:
        res.results[f"{key}/{TRUTH_MEASURE}"] = row[TRUTH_MEASURE] = on_truth
        ok[key] = ok[key] and on_truth >= threshold
    row["judge_ok"] = ok[key]


def _judge_section(ok: dict[str, bool], means: dict[str, list[str]], threshold: float) -> dict:
    """reports/eval.json ``judge``: which target accuracies the judge is good enough to measure."""
    for mean, keys in means.items():
        ok[mean] = bool(keys) and all(ok[k] for k in keys)
    return {"min_accuracy": threshold, "measure": MEASURE,
            "rule": f"a target accuracy is meaningful (judge_ok) when the judge's {MEASURE} on real test images "
                    f"of the target's label is >= min_accuracy (evaluate.judge_min_accuracy) and, on synthetic "
                    f"data, so is its {TRUTH_MEASURE} (the target accuracy of the true counterfactuals, what a "
                    f"perfect generator would score; for a target that is not one face, e.g. an RaFD face given "
                    f"a CelebA attribute, of the true face with only the scored label changed); a mean when all "
                    f"its targets are",
            "judge_ok": dict(sorted(ok.items())),
            "not_meaningful": sorted(k for k, v in ok.items() if not v)}


def _ground_truth_or_none(ctx: EvalContext, dataset: str):
    try:
        return ground_truth(ctx, dataset)
    except MetricUnavailable:         # real data: no true counterfactuals to check the judge on
        return None


def _renders_true(ctx: EvalContext, gt, dataset: str, batch: dict) -> bool:
    if not all(batch["extra"]):
        return False
    try:
        render_floor(ctx, gt, dataset, batch)
    except MetricUnavailable:
        return False
    return True


def target_key(src: str, t: V1Target) -> str:
    label = t.name.split("/")[-1]
    return f"{src}/{label}" if t.own else f"{src}_to_{t.dataset}/{label}"


def _v1(ctx: EvalContext) -> MetricResult:
    hits, kept, counts = defaultdict(float), defaultdict(float), defaultdict(int)
    res, judge, label_of = MetricResult("target_accuracy"), {}, {}
    threshold = ctx.cfg.evaluate.judge_min_accuracy
    for ds in ctx.datasets():
        res.results[f"real/{ds}"], judge[ds] = real_scores(ctx, ds)
        _report_real(res, ds, judge[ds])
    truth_hits, truth_n = defaultdict(float), defaultdict(int)
    for ds in ctx.datasets():
        gt = _ground_truth_or_none(ctx, ds)
        for batch, outs in v1_translations(ctx, ds):
            batch_gt = gt if gt is not None and _renders_true(ctx, gt, ds, batch) else None
            for t, fake in outs:
                clf = ctx.classifier(t.dataset)
                pred = clf.predict(fake)
                key = target_key(ds, t)
                label_of[key] = (t.dataset, clf.label_names[t.attr])
                hits[key] += float(target_hit(clf, pred, t).sum())
                counts[key] += fake.size(0)
                if t.own and clf.label_kind == "multi":
                    kept[key] += float(others_kept(clf, pred, t).sum())
                truth = v1_judge_truth(ctx, batch_gt, batch, t) if batch_gt is not None else None
                if truth is not None:
                    truth_hits[key] += float(target_hit(clf, clf.predict(truth), t).sum())
                    truth_n[key] += truth.size(0)
    groups, ok = defaultdict(list), {}
    for key, n in counts.items():
        acc = hits[key] / n
        res.results[key] = acc
        row = {"source": key.split("/")[0], "target": key.split("/")[1], "accuracy": acc, "images": n}
        if key in kept:
            res.results[f"{key}/others_kept"] = row["others_kept"] = kept[key] / n
        target_ds, label = label_of[key]
        _judge(res, key, judge[target_ds].get(label), row, threshold, ok,
               truth_hits[key] / truth_n[key] if truth_n[key] else None)
        res.tables.setdefault("eval_accuracy", []).append(row)
        groups[key.split("/")[0]].append(key)
    for g, keys in groups.items():
        res.results[f"{g}/mean"] = sum(res.results[k] for k in keys) / len(keys)
    own = [k for k in counts if "_to_" not in k.split("/")[0]]
    res.results["mean"] = sum(res.results[k] for k in own) / len(own) if own else float("nan")
    res.sections["judge"] = _judge_section(ok, {"mean": own, **{f"{g}/mean": keys for g, keys in groups.items()}},
                                           threshold)
    res.meta = {"headline": "mean: target accuracy over every (source dataset, own-dataset target)",
                "classifiers": {d: ctx.classifier(d).metrics for d in ctx.datasets()}}
    return res


def _v2(ctx: EvalContext) -> MetricResult:
    ds = v2_dataset(ctx)
    clf = ctx.classifier(ds)
    names = ctx.model.domains.names
    res, ok, means = MetricResult("target_accuracy"), {}, {}
    threshold = ctx.cfg.evaluate.judge_min_accuracy
    res.results[f"real/{ds}"], label_scores = real_scores(ctx, ds)
    _report_real(res, ds, label_scores)
    judge = real_domain_scores(ctx, ds)
    _report_real(res, ds, {f"domain/{d}": sc for d, sc in judge.items()})
    for mode in ("latent", "reference"):
        accs, means[f"{mode}/mean"] = [], []
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
            means[f"{mode}/mean"].append(key)
            row = {"source": f"{mode}/{names[src]}", "target": names[trg], "accuracy": hit / n, "images": n}
            _judge(res, key, judge.get(names[trg]), row, threshold, ok)
            res.tables.setdefault("eval_accuracy", []).append(row)
        if accs:
            res.results[f"{mode}/mean"] = sum(accs) / len(accs)
    mode_means = [res.results[f"{m}/mean"] for m in ("latent", "reference") if f"{m}/mean" in res.results]
    res.results["mean"] = sum(mode_means) / len(mode_means) if mode_means else float("nan")
    means = {m: keys for m, keys in means.items() if keys}
    res.sections["judge"] = _judge_section(ok, {"mean": [k for keys in means.values() for k in keys], **means},
                                           threshold)
    res.meta = {"classifier": clf.metrics}
    return res


@register_metric("target_accuracy", quick=True)
def target_accuracy(ctx: EvalContext) -> MetricResult:
    """Share of translations the real-data classifier assigns to the target domain."""
    return _v1(ctx) if ctx.kind == "v1" else _v2(ctx)
