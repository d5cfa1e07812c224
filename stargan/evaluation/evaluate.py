"""Entry points: evaluate a model with every registered metric, the cheap objective for sweeps,
and the evaluate stage's whole job (checkpoint -> reports/eval.json, metrics/headline.json, plots,
grids, MLflow)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

# The metric modules register themselves with the registry in metrics.py when imported.
import stargan.evaluation.metric_accuracy  # noqa: F401
import stargan.evaluation.metric_cfid  # noqa: F401
import stargan.evaluation.metric_counterfactual  # noqa: F401
import stargan.evaluation.metric_cycle  # noqa: F401
import stargan.evaluation.metric_fid  # noqa: F401
import stargan.evaluation.metric_lpips  # noqa: F401
from stargan.config import EVAL_REPORT, HEADLINE, Config
from stargan.evaluation.metrics import MetricResult, calc_metric, list_metrics
from stargan.evaluation.report import build_report, headline, log_to_tracking, sample_grids, write_tables
from stargan.evaluation.tasks import EvalContext
from stargan.files import sha256_file, write_json
from stargan.inference import model_from_state
from stargan.progress import Progress
from stargan.tracking import RUN_ID_KEY, Tracker
from stargan.training.checkpoint import check_compatible, load_state


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_context(model, cfg: Config, repo_root: Path, device=None, max_images: int | None = None) -> EvalContext:
    device = torch.device(device) if device is not None else default_device()
    for net in ("G", "F", "E"):
        if hasattr(model, net):
            getattr(model, net).to(device)
    return EvalContext(model=model, cfg=cfg, repo_root=Path(repo_root), device=device,
                       max_images=cfg.evaluate.max_images if max_images is None else max_images)


def run_metrics(ctx: EvalContext, metrics: Sequence[str] | None = None, verbose: bool = False) -> dict[str, MetricResult]:
    """Each metric in turn; ``verbose``: one line per metric as it ends, with done/total and ETA."""
    names = list(metrics or list_metrics())
    progress = Progress("[evaluate] metrics", len(names), "metrics", every_s=0.0, enabled=verbose, start=0)
    out = {}
    for done, name in enumerate(names, 1):
        out[name] = r = calc_metric(name, ctx)
        state = (f"{len(r.results)} values" if r.available else r.reason if r.reason.startswith("not defined")
                 else f"unavailable: {r.reason}. Fix: {r.fix}")
        progress.update(done, f"{name}: {state} ({r.seconds:.1f}s)")
    return out


def evaluate_model(model, cfg: Config, repo_root: Path, *, device=None, max_images: int | None = None,
                   metrics: Sequence[str] | None = None, verbose: bool = False) -> dict:
    """Every registered metric (or ``metrics``) on the test split -> the ``reports/eval.json``
    dict (numbers per metric, ``unavailable`` with reasons and fixes, ``info``), with the plot
    rows under the extra key ``"_tables"`` and the :class:`EvalContext` under ``"_ctx"``."""
    ctx = make_context(model, cfg, repo_root, device, max_images)
    results = run_metrics(ctx, metrics, verbose)
    report = build_report(results, ctx)
    report["_results"] = results
    report["_ctx"] = ctx
    return report


def quick_objective(model, cfg: Config, repo_root: Path, max_images: int = 16, device=None) -> dict:
    """Cheap numbers for a hyperparameter sweep: counterfactual error (synthetic data) and
    target accuracy (when ``models/classifier`` exists) on ``max_images`` test images per
    dataset/domain. ``objective`` (lower is better) is the counterfactual L1 when available,
    else ``1 - target_accuracy``; keys of metrics that could not run are in ``unavailable``."""
    t0 = time.time()
    ctx = make_context(model, cfg, repo_root, device, max_images)
    out: dict = {"unavailable": {}}
    for name in ("counterfactual", "target_accuracy"):
        r = calc_metric(name, ctx)
        if not r.available:
            out["unavailable"][name] = r.reason
            continue
        if name == "counterfactual":
            for k in ("l1", "psnr", "ssim", "identity_l1", "l1_gain"):
                out[f"counterfactual_{k}"] = r.results[k]
        else:
            out["target_accuracy"] = r.results["mean"]
    if "counterfactual_l1" in out:
        out["objective"] = out["counterfactual_l1"]
    elif "target_accuracy" in out:
        out["objective"] = 1.0 - out["target_accuracy"]
    else:
        out["objective"] = float("nan")
    out["seconds"] = time.time() - t0
    return out


def evaluate_checkpoint(cfg: Config, repo_root: Path, checkpoint: Path | None = None, log=print) -> dict:
    """The evaluate stage: ``train.output_dir/checkpoint.pt`` -> metrics/headline.json (the few
    numbers DVC compares), reports/eval.json (every number), reports/eval_details.json (per-metric
    metadata: image counts, skipped targets, classifier scores), reports/eval_*.csv (per-target
    tables), plots/eval/*.csv (bar charts), plots/eval_grids/*.png, all also logged to the model's
    MLflow run. Returns the full report."""
    repo_root = Path(repo_root)
    path = checkpoint or repo_root / cfg.train.output_dir / "checkpoint.pt"
    state = load_state(path)
    check_compatible(state, cfg.to_dict(), what="evaluate")
    device = default_device()
    model = model_from_state(state, device)
    log(f"[evaluate] {state.model} checkpoint at step {state.step} on {device}")
    report = evaluate_model(model, cfg, repo_root, device=device, verbose=True)
    results, ctx = report.pop("_results"), report.pop("_ctx")
    report["info"]["checkpoint_sha256"] = sha256_file(path)     # which model these numbers belong to
    files = [write_json(repo_root / EVAL_REPORT, report), write_json(repo_root / HEADLINE, headline(report)),
             write_json(repo_root / "reports" / "eval_details.json",
                        {name: r.to_dict() for name, r in results.items()})]
    files += write_tables(results, repo_root / "reports", repo_root / "plots")
    grid_dir = repo_root / "plots" / "eval_grids"
    for old in grid_dir.glob("*.png") if grid_dir.exists() else []:
        old.unlink()
    files += sample_grids(ctx, grid_dir)
    run_id = state.extra.get(RUN_ID_KEY)
    if run_id:
        tracker = Tracker.for_config(cfg, repo_root)
        if log_to_tracking(tracker, run_id, report, files, state.step):
            log(f"[evaluate] logged to MLflow run {run_id} at {tracker.uri}")
    else:
        log("[evaluate] the checkpoint has no MLflow run id (trained with --local): results are on disk only")
    return report
