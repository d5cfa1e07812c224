"""Ray Tune sweep over the loss weights: trial configs, best.json -> train overrides, and (slow) a
real 2-trial ASHA + Optuna sweep with nested MLflow runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stargan.config import config_from_dict, load_config
from stargan.tuning import SEARCH, apply_best, metrics_summary, trial_config
from test_export import tiny_params
from tiny_project import REPO, build_data, env


def test_trial_config_sets_lambdas_iterations_and_report_points():
    params = tiny_params("v1")
    cfg = trial_config(params, {"lambda_cls": 0.7, "lambda_rec": 12.5},
                       {"iters_per_trial": 10, "reports_per_trial": 3, "use_ray_train": False})
    assert (cfg.train.v1.lambda_cls, cfg.train.v1.lambda_rec) == (0.7, 12.5)
    assert cfg.train.num_iters == 10 and cfg.train.checkpoint_every == 4      # reports at 4, 8, 10
    cfg2 = trial_config(tiny_params("v2"), {"lambda_sty": 1.5, "lambda_ds": 0.6},
                        {"iters_per_trial": 6, "reports_per_trial": 2, "use_ray_train": False})
    assert (cfg2.train.v2.lambda_sty, cfg2.train.v2.lambda_ds) == (1.5, 0.6)


def test_apply_best_overrides_only_when_enabled_and_same_model(tmp_path):
    cfg = config_from_dict(tiny_params("v1"))
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"enabled": True, "model": "v1", "best": {"lambda_cls": 1.7, "lambda_rec": 6.0},
                                "overrides": {"train.v1.lambda_cls": 1.7, "train.v1.lambda_rec": 6.0}}))
    new, applied = apply_best(cfg, best)
    assert applied == {"train.v1.lambda_cls": 1.7, "train.v1.lambda_rec": 6.0}
    assert (new.train.v1.lambda_cls, new.train.v1.lambda_rec) == (1.7, 6.0)
    off = config_from_dict(tiny_params("v1"), ["tune.enabled=false"])
    assert apply_best(off, best) == (off, {})
    v2 = config_from_dict(tiny_params("v2"))
    assert apply_best(v2, best)[1] == {}, "a v1 sweep's λs never reach a v2 model"
    assert apply_best(cfg, tmp_path / "missing.json")[1] == {}
    assert metrics_summary({"enabled": False}) == {"enabled": 0}


def _check_sweep(root: Path, best: dict, model: str) -> None:
    from mlflow.tracking import MlflowClient

    cfg = load_config(root / "params.yaml")
    assert best["enabled"] and best["model"] == model and len(best["trials"]) == 2
    for tr in best["trials"]:
        for k, v in tr["lambdas"].items():
            lo, hi = getattr(cfg.tune, k)
            assert lo <= v <= hi, f"{k}={v} outside [{lo}, {hi}]"
        assert tr["error"] is None and tr["objective"] is not None
    assert set(best["best"]) == set(SEARCH[model])
    assert best["overrides"] == {SEARCH[model][k]: v for k, v in best["best"].items()}
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    parent = client.get_run(best["mlflow_parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for ch in children:
        assert set(SEARCH[model]) <= set(ch.data.params)
        assert "objective" in ch.data.metrics and ch.info.status == "FINISHED"


@pytest.mark.slow
def test_two_trial_sweep_writes_best_json_with_nested_mlflow_runs(tmp_path):
    root = build_data(tmp_path / "proj", {"tune": {"num_samples": 2, "iters_per_trial": 4, "reports_per_trial": 2,
                                                   "val_images": 4}})
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "tune.py")], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = json.loads((root / "models" / "tune" / "best.json").read_text())
    _check_sweep(root, best, "v1")
    summary = json.loads((root / "metrics" / "tune.json").read_text())
    assert summary["trials"] == 2 and summary["best_objective"] == best["best_value"]
    # The train stage applies (and says) the chosen λs.
    train = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py")], cwd=root, env=env(),
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-4000:]
    assert "[train] applying the sweep's best loss weights" in train.stdout
    from stargan.training.checkpoint import load_state

    state = load_state(root / "models" / "train" / "checkpoint.pt")
    assert state.config["train"]["v1"]["lambda_cls"] == pytest.approx(best["best"]["lambda_cls"])


@pytest.mark.slow
def test_tune_over_ray_train(tmp_path):
    """tune.use_ray_train: every trial is a TorchTrainer run (the cluster path); same outputs."""
    root = build_data(tmp_path / "proj", {"tune": {"num_samples": 2, "iters_per_trial": 4, "reports_per_trial": 2,
                                                   "val_images": 4, "use_ray_train": True}})
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "tune.py")], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = json.loads((root / "models" / "tune" / "best.json").read_text())
    assert best["trainable"] == "ray_train"
    _check_sweep(root, best, "v1")
