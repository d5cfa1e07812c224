"""Synthetic ground truth: each translation against the true counterfactual of its input.

The synthetic sets store every image's render parameters, so "this face, with the target's
labels" can be rendered exactly (same identity, pose, background), warped with the image's own
alignment matrix and resized like the input. Reported per target and as means:

- ``l1`` (pixels in [0, 1]), ``psnr`` (dB), ``ssim`` of G's output vs the counterfactual, over
  the pairs whose target changes the face (``images`` of them);
- ``identity_l1`` / ``identity_psnr`` / ``identity_ssim``: the same for the input itself (doing
  nothing), so ``l1_gain = identity_l1 - l1`` > 0 means the model moved towards the truth;
- ``kept_l1``: G's output vs the input over the pairs whose target is the face's own label
  (``kept_images``; e.g. black hair -> black hair), where any change is an error;
- ``targets``, ``targets_beating_identity``, ``fraction_beating_identity``: how many targets have
  ``l1_gain > 0`` (the issue's "closer to the true counterfactual than the input is");
- ``<dataset>/render_floor_l1``: the unchanged parameters rendered vs the stored input (JPEG
  and resampling noise): no model can score below it.

v1 targets: the image's own dataset, plus other datasets' classes when the renderer draws
them (CelebA-like faces with RaFD expressions). RaFD-like -> CelebA targets are skipped: G gets
zeros for the attributes an RaFD image has no labels for, so the target is not one face.
v2: one latent- and one reference-guided output per source image and task.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from stargan.evaluation.errors import MetricUnavailable
from stargan.evaluation.image_metrics import all_metrics, l1
from stargan.evaluation.metric_accuracy import target_key
from stargan.evaluation.metrics import MetricResult, register_metric
from stargan.evaluation.tasks import (NOT_ONE_FACE, EvalContext, ground_truth, render_floor, v1_translations, v1_truth,
                                      v2_dataset, v2_domain_labels, v2_tasks, v2_translations)


class _Sums:
    """Per-target sums, kept apart for *changed* pairs (the target changes the face: G must move
    towards the truth) and *kept* pairs (the target is the face's own label, e.g. black hair ->
    black hair: the truth is the input, so only G's fidelity is measured there)."""

    def __init__(self):
        self.sums = defaultdict(float)
        self.n = defaultdict(int)
        self.kept_n = defaultdict(int)

    def add(self, key: str, pred: torch.Tensor, ident: torch.Tensor, gt: torch.Tensor, changed: torch.Tensor) -> None:
        changed = changed.to(pred.device)
        if changed.any():
            for prefix, img in (("", pred), ("identity_", ident)):
                for m, v in all_metrics(img[changed], gt[changed]).items():
                    self.sums[(key, prefix + m)] += float(v.double().sum())
            self.n[key] += int(changed.sum())
        if (~changed).any():
            self.sums[(key, "kept_l1")] += float(l1(pred[~changed], gt[~changed]).double().sum())
            self.kept_n[key] += int((~changed).sum())

    def write(self, res: MetricResult, table: str) -> None:
        groups = defaultdict(lambda: defaultdict(list))
        for key in sorted(set(self.n) | set(self.kept_n)):
            row = {"source": key.split("/")[0], "target": key.split("/")[-1], "images": self.n[key],
                   "kept_images": self.kept_n[key]}
            for (k, m), s in self.sums.items():
                if k == key:
                    row[m] = s / (self.kept_n[key] if m == "kept_l1" else self.n[key])
            if self.n[key]:
                row["l1_gain"] = row["identity_l1"] - row["l1"]
            for m, v in row.items():
                if m not in ("source", "target"):
                    res.results[f"{key}/{m}"] = v
            res.tables.setdefault(table, []).append(row)
            for m in ("l1", "psnr", "ssim", "identity_l1", "identity_psnr", "identity_ssim", "l1_gain", "kept_l1"):
                if m in row:
                    groups[key.split("/")[0]][m].append(row[m])
                    groups[""][m].append(row[m])
        for g, ms in groups.items():
            prefix = f"{g}/" if g else ""
            for m, vals in ms.items():
                res.results[prefix + m] = sum(vals) / len(vals)
            gains = ms.get("l1_gain", [])         # one per target with changed pairs
            if gains:
                beating = sum(1 for v in gains if v > 0)
                res.results[prefix + "targets"] = float(len(gains))
                res.results[prefix + "targets_beating_identity"] = float(beating)
                res.results[prefix + "fraction_beating_identity"] = beating / len(gains)


def _v1(ctx: EvalContext) -> MetricResult:
    res, sums, skipped = MetricResult("counterfactual"), _Sums(), {}
    layout = ctx.model.layout
    for ds in ctx.datasets():
        try:
            gt = ground_truth(ctx, ds)
        except MetricUnavailable as e:
            skipped[ds] = e.reason
            continue
        floors = []
        for batch, outs in v1_translations(ctx, ds):
            if not all(batch["extra"]):
                raise MetricUnavailable(f"'{ds}' test images carry no render parameters", "re-run `dvc repro shard`")
            floors.append(render_floor(ctx, gt, ds, batch))
            for t, fake in outs:
                truth, why_not = v1_truth(ctx, gt, batch, t)
                if truth is None:
                    skipped[f"{ds}_to_{t.dataset}" if why_not == NOT_ONE_FACE else target_key(ds, t)] = why_not
                    continue
                names = list(layout.datasets[t.dataset_idx].label_names)
                sums.add(target_key(ds, t), fake, batch["image"], truth, gt.changed(batch, names, t.labels))
        if floors:
            res.results[f"{ds}/render_floor_l1"] = sum(floors) / len(floors)
    if not sums.n:
        raise MetricUnavailable("no synthetic test images with render parameters: " + "; ".join(
            f"{k}: {v}" for k, v in skipped.items()), "use synthetic datasets for the ground-truth metric")
    sums.write(res, "eval_counterfactual")
    res.meta = {"skipped": skipped, "l1_scale": "pixels in [0, 1]", "ssim": "Gaussian 11x11, sigma 1.5"}
    return res


def _v2(ctx: EvalContext) -> MetricResult:
    ds = v2_dataset(ctx)
    gt = ground_truth(ctx, ds)
    names = ctx.model.domains.names
    label_names = list(ctx.manifest(ds)["label_names"])
    res, sums = MetricResult("counterfactual"), _Sums()
    floors = []
    for mode in ("latent", "reference"):
        for src, trg in v2_tasks(ctx):
            lnames, values = v2_domain_labels(ctx.model, label_names, trg)
            for batch, outs in v2_translations(ctx, src, trg, mode, num_outs=1):
                if mode == "latent":
                    floors.append(render_floor(ctx, gt, ds, batch))
                labels = torch.tensor([values] * batch["image"].size(0), dtype=torch.float32)
                truth = gt.batch(batch, lnames, labels, ctx.device)
                sums.add(f"{mode}/{names[src]}_to_{names[trg]}", outs[0], batch["image"], truth,
                         gt.changed(batch, lnames, labels))
    if not sums.n:
        raise MetricUnavailable(f"no test images in any v2 domain of '{ds}'", "check train.v2.domains")
    sums.write(res, "eval_counterfactual")
    res.results[f"{ds}/render_floor_l1"] = sum(floors) / max(len(floors), 1)
    res.meta = {"l1_scale": "pixels in [0, 1]", "outputs_per_source": 1}
    return res


@register_metric("counterfactual", quick=True)
def counterfactual_error(ctx: EvalContext) -> MetricResult:
    """L1/PSNR/SSIM of translations vs the true synthetic counterfactual (and of the input)."""
    return _v1(ctx) if ctx.kind == "v1" else _v2(ctx)
