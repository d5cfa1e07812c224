"""Turning metric results into files: ``metrics/eval.json`` (DVC metrics), ``plots/eval_*.csv``
(DVC plots), sample grids, and the same in the evaluated model's MLflow run."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import torch

from stargan.evaluation.metrics import MetricResult
from stargan.evaluation.tasks import EvalContext, ground_truth, v1_targets, v2_dataset, v2_domain_batches, _z
from stargan.evaluation.errors import MetricUnavailable
from stargan.tracking import Tracker
from stargan.visualize import grid, save_png

#: plot file -> (columns in order); every file is written on every run (header only when the
#: metric is unavailable) so DVC always finds the declared plots.
PLOTS = {
    "eval_accuracy": ["name", "source", "target", "accuracy", "others_kept", "images"],
    "eval_counterfactual": ["name", "source", "target", "l1", "identity_l1", "l1_gain", "psnr", "identity_psnr",
                            "ssim", "identity_ssim", "images", "kept_l1", "kept_images"],
    "eval_fid": ["task", "fid"],
    "eval_fid_classifier_features": ["task", "fid"],
    "eval_lpips": ["task", "lpips"],
}


def _num(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    return v


def build_report(results: dict[str, MetricResult], ctx: EvalContext) -> dict:
    """The ``metrics/eval.json`` content: numbers per metric, and why any metric is missing."""
    out: dict = {"model": ctx.kind, "step": ctx.model.step, "unavailable": {}, "not_applicable": {},
                 "info": {"fid_real_split": ctx.cfg.evaluate.fid_real_split, "max_images": ctx.max_images,
                          "image_size": ctx.image_size, "seconds": {}}}
    for name, r in results.items():
        out["info"]["seconds"][name] = round(r.seconds, 2)
        if r.available:
            out[name] = {k: _num(v) for k, v in sorted(r.results.items())}
            notes = {k: v for k, v in r.meta.items() if isinstance(v, str) or (k == "skipped" and v)}
            if notes:
                out["info"].setdefault("notes", {})[name] = notes
        elif r.reason.startswith("not defined for"):
            out["not_applicable"][name] = r.reason
        else:
            out["unavailable"][name] = {"reason": r.reason, "fix": r.fix}
    return out


def write_plots(results: dict[str, MetricResult], plots_dir: Path) -> list[Path]:
    rows: dict[str, list[dict]] = {k: [] for k in PLOTS}
    for r in results.values():
        for table, trs in r.tables.items():
            rows.setdefault(table, []).extend(trs)
    paths = []
    plots_dir.mkdir(parents=True, exist_ok=True)
    for table, trs in rows.items():
        cols = PLOTS.get(table) or sorted({k for t in trs for k in t})
        path = plots_dir / f"{table}.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for t in trs:
                t = dict(t)
                t.setdefault("name", f"{t.get('source', '')}/{t.get('target', '')}")
                w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.items()})
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------- grids

@torch.no_grad()
def _first_images(ctx: EvalContext, dataset: str, n: int) -> dict | None:
    return next(iter(ctx.batches(dataset, limit=n)), None)


@torch.no_grad()
def sample_grids(ctx: EvalContext, out_dir: Path) -> list[Path]:
    """v1: source x every target, and (synthetic) translation next to its true counterfactual;
    v2: source x latent styles per domain, and source x reference images."""
    n, paths = ctx.cfg.evaluate.grid_images, []
    if ctx.kind == "v1":
        layout = ctx.model.layout
        for ds in ctx.datasets():
            b = _first_images(ctx, ds, n)
            if b is None:
                continue
            x, targets = b["image"], v1_targets(layout, layout.index(ds), b["label"])
            fakes = [ctx.model.translate(x, t.model_label) for t in targets]
            paths.append(save_png(out_dir / f"samples_{ds}.png",
                                  grid([torch.stack([x[i]] + [f[i] for f in fakes]) for i in range(x.size(0))])))
            try:
                gt = ground_truth(ctx, ds)
                own = [(t, f) for t, f in zip(targets, fakes) if t.own]
                truths = [gt.batch(b, list(layout.datasets[t.dataset_idx].label_names), t.labels, ctx.device)
                          for t, _ in own]
            except (MetricUnavailable, ValueError):
                continue
            rows = [torch.stack([x[i]] + [im for (_, f), g in zip(own, truths) for im in (f[i], g[i])])
                    for i in range(x.size(0))]
            paths.append(save_png(out_dir / f"counterfactual_{ds}.png", grid(rows)))
        return paths
    model, k = ctx.model, min(3, ctx.cfg.evaluate.num_outs_per_domain)
    b = _first_images(ctx, v2_dataset(ctx), n)
    if b is None:
        return paths
    x = b["image"]
    cols = [x]
    for d in range(model.domains.num_domains):
        y = torch.full((x.size(0),), d, dtype=torch.int64, device=ctx.device)
        cols += [model.translate_latent(x, y, _z(ctx, 1, 9999, d, j).expand(x.size(0), -1)) for j in range(k)]
    paths.append(save_png(out_dir / "latent.png", grid([torch.stack([c[i] for c in cols]) for i in range(x.size(0))])))
    refs, ys = [], []
    for d in range(model.domains.num_domains):
        rb = next(iter(v2_domain_batches(ctx, d, limit=1)), None)
        if rb is not None:
            refs.append(rb["image"][0])
            ys.append(d)
    if refs:
        ref = torch.stack(refs)
        y = torch.tensor(ys, device=ctx.device)
        rows = [torch.cat([torch.ones_like(x[:1]), ref])]
        for i in range(x.size(0)):
            rows.append(torch.cat([x[i:i + 1], model.translate_reference(x[i:i + 1].expand(len(refs), -1, -1, -1),
                                                                         ref, y)]))
        paths.append(save_png(out_dir / "reference.png", grid(rows)))
    return paths


# ---------------------------------------------------------------------------------- MLflow

def _metric_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


def flat_numbers(report: dict, prefix: str = "eval/") -> dict[str, float]:
    out = {}
    for metric, values in report.items():
        if isinstance(values, dict) and metric not in ("unavailable", "not_applicable", "info"):
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[_metric_name(f"{prefix}{metric}/{k}")] = float(v)
    return out


def log_to_tracking(tracker: Tracker, run_id: str, report: dict, files: list[Path], step: int) -> bool:
    """Metrics under ``eval/...`` and every file under the artifact folder ``eval``; a warning
    (not a failure) when the tracking server cannot be reached."""
    def log() -> None:
        tracker.log_metrics(run_id, [(k, v, step) for k, v in sorted(flat_numbers(report).items())])
        tracker.set_tags(run_id, {f"eval.unavailable.{k}": v["reason"] for k, v in report.get("unavailable", {}).items()})
        for f in files:
            tracker.log_artifact(run_id, f, "eval" if f.suffix != ".png" else "eval/grids")

    return tracker.attempt(f"log the evaluation to run {run_id}", log)
