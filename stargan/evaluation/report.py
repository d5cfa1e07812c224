"""Turning metric results into files: ``metrics/headline.json`` (the few numbers DVC shows and
compares), ``reports/eval.json`` (every number), ``reports/eval_*.csv`` (the per-target tables),
``plots/eval/*.csv`` (one bar chart per metric for ``dvc plots show``), sample grids, and the same in
the evaluated model's MLflow run."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import torch

from stargan.evaluation.errors import MetricUnavailable
from stargan.evaluation.metrics import MetricResult
from stargan.evaluation.tasks import EvalContext, _z, ground_truth, v1_targets, v2_dataset, v2_domain_batches
from stargan.tracking import Tracker
from stargan.visualize import labelled_grid, save_png

#: per-target tables (reports/<table>.csv): their columns in order.
TABLES = {
    "eval_accuracy": ["name", "source", "target", "accuracy", "others_kept", "images", "judge_accuracy",
                      "judge_balanced_accuracy", "judge_truth_accuracy", "judge_ok"],
    "eval_counterfactual": ["name", "source", "target", "l1", "identity_l1", "l1_gain", "psnr", "identity_psnr",
                            "ssim", "identity_ssim", "images", "kept_l1", "kept_images"],
    "eval_fid": ["task", "fid"],
    "eval_fid_classifier_features": ["task", "fid"],
    "eval_lpips": ["task", "lpips"],
}
#: bar charts (plots/eval/<file>.csv, columns target,value): table -> (file, the table's value column).
BARS = {"eval_accuracy": ("target_accuracy", "accuracy"),
        "eval_counterfactual": ("counterfactual_l1_gain_over_input", "l1_gain"),
        "eval_fid": ("fid", "fid"), "eval_fid_classifier_features": ("fid_classifier_features", "fid"),
        "eval_lpips": ("lpips_diversity", "lpips")}


def _num(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    return v


def build_report(results: dict[str, MetricResult], ctx: EvalContext) -> dict:
    """The ``reports/eval.json`` content: numbers per metric, the sections metrics add (``judge``:
    whether each target accuracy is meaningful), and why any metric is missing."""
    out: dict = {"model": ctx.kind, "step": ctx.model.step, "unavailable": {}, "not_applicable": {},
                 "info": {"fid_real_split": ctx.cfg.evaluate.fid_real_split, "max_images": ctx.max_images,
                          "image_size": ctx.image_size, "seconds": {}}}
    for name, r in results.items():
        out["info"]["seconds"][name] = round(r.seconds, 2)
        if r.available:
            out[name] = {k: _num(v) for k, v in sorted(r.results.items())}
            out.update(r.sections)
            notes = {k: v for k, v in r.meta.items() if isinstance(v, str) or (k == "skipped" and v)}
            if notes:
                out["info"].setdefault("notes", {})[name] = notes
        elif r.reason.startswith("not defined for"):
            out["not_applicable"][name] = r.reason
        else:
            out["unavailable"][name] = {"reason": r.reason, "fix": r.fix}
    return out


def headline(report: dict) -> dict[str, float]:
    """The few numbers a user compares across runs (``dvc metrics show``, ``dvc exp show``): every
    one is in ``reports/eval.json`` under its full name too (``kept_l1`` and the cycle L1 live only
    there: seven columns is what fits a 120-character terminal). Absent when the metric did not run;
    ``fid_cls`` stands in for ``fid`` only when the Inception weights were not there."""
    def get(metric: str, key: str) -> float | None:
        v = report.get(metric, {}).get(key) if isinstance(report.get(metric), dict) else None
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    acc = report.get("target_accuracy", {})
    judge = [v for k, v in acc.items() if k.startswith("real/") and k.count("/") == 1 and isinstance(v, (int, float))]
    targets = [v for k, v in acc.items() if k.count("/") == 1 and not k.startswith("real/")
               and not k.endswith("/mean") and isinstance(v, (int, float))]
    kept, change = get("counterfactual", "kept_l1"), get("counterfactual", "identity_l1")
    fid = get("fid", "mean")
    values = {"accuracy": get("target_accuracy", "mean"),               # translations classified as their target
              "worst_accuracy": min(targets) if targets else None,      # the weakest target's
              "judge": sum(judge) / len(judge) if judge else None,      # the classifier on real test images
              "beats_input": get("counterfactual", "fraction_beating_identity"),
              "l1_gain": get("counterfactual", "l1_gain"),
              # what an unchanged target costs, relative to the size of the changes (well under 1 = good)
              "kept_ratio": kept / change if kept is not None and change else None,
              "fid": fid,
              "fid_cls": get("fid_classifier_features", "mean") if fid is None else None}
    return {k: round(v, 4) for k, v in values.items() if v is not None}


def write_tables(results: dict[str, MetricResult], reports_dir: Path, plots_dir: Path) -> list[Path]:
    """The per-target tables (reports/eval_*.csv, every column) and one bar chart per metric that
    ran (plots/eval/<metric>.csv: target, value). A metric that did not run has no chart: DVC shows
    no empty plot, and ``reports/eval.json`` says why it is missing."""
    rows: dict[str, list[dict]] = {k: [] for k in TABLES}
    for r in results.values():
        for table, trs in r.tables.items():
            rows.setdefault(table, []).extend(trs)
    bars_dir = plots_dir / "eval"
    for old in bars_dir.glob("*.csv") if bars_dir.exists() else []:
        old.unlink()
    paths = []
    for table, trs in rows.items():
        for t in trs:
            if "source" in t:
                t.setdefault("name", f"{t['source']}/{t.get('target', '')}")
        paths.append(_write_csv(reports_dir / f"{table}.csv", TABLES.get(table) or sorted({k for t in trs for k in t}),
                                trs))
        if table in BARS and trs:
            file, column = BARS[table]
            bars = [{"target": t.get("name", t.get("task")), "value": t[column]} for t in trs
                    if isinstance(t.get(column), (int, float))]
            paths.append(_write_csv(bars_dir / f"{file}.csv", ["target", "value"], bars))
    return paths


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for t in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.items()})
    return path


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
                                  labelled_grid([torch.stack([x[i]] + [f[i] for f in fakes]) for i in range(x.size(0))],
                                                ["input"] + [t.name for t in targets])))
            try:
                gt = ground_truth(ctx, ds)
                own = [(t, f) for t, f in zip(targets, fakes) if t.own]
                truths = [gt.batch(b, list(layout.datasets[t.dataset_idx].label_names), t.labels, ctx.device)
                          for t, _ in own]
            except (MetricUnavailable, ValueError):
                continue
            rows = [torch.stack([x[i]] + [im for (_, f), g in zip(own, truths) for im in (f[i], g[i])])
                    for i in range(x.size(0))]
            columns = ["input"] + [f"{t.name} {kind}" for t, _ in own for kind in ("ours", "truth")]
            paths.append(save_png(out_dir / f"counterfactual_{ds}.png", labelled_grid(rows, columns)))
        return paths
    model, k = ctx.model, min(3, ctx.cfg.evaluate.num_outs_per_domain)
    b = _first_images(ctx, v2_dataset(ctx), n)
    if b is None:
        return paths
    x = b["image"]
    cols, names = [x], ["input"]
    for d in range(model.domains.num_domains):
        y = torch.full((x.size(0),), d, dtype=torch.int64, device=ctx.device)
        cols += [model.translate_latent(x, y, _z(ctx, 1, 9999, d, j).expand(x.size(0), -1)) for j in range(k)]
        names += [f"{model.domains.names[d]} z{j}" for j in range(k)]
    paths.append(save_png(out_dir / "latent.png",
                          labelled_grid([torch.stack([c[i] for c in cols]) for i in range(x.size(0))], names)))
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
        paths.append(save_png(out_dir / "reference.png",
                              labelled_grid(rows, ["input"] + [f"ref {model.domains.names[d]}" for d in ys])))
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
