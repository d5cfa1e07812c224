"""Ray Tune sweep over the loss weights: which λs are searched, tuned.yaml -> the training config,
and (slow) a real 2-trial ASHA + Optuna sweep with nested MLflow runs whose best value trains."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stargan.config import ConfigError, config_from_dict, load_config, resolve_tuned, tuned_keys
from stargan.tuning import SEARCH, metrics_summary, searched, trial_config, tuned_yaml
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


def _best(values: dict) -> dict:
    return {"name": "tune-x", "objective": "counterfactual_l1", "mode": "min", "best_value": 0.1,
            "tuned": values, "trials": [{}]}


def test_only_weights_set_to_tuned_are_searched_and_replaced(tmp_path):
    """A number in params trains as written even when tuned.yaml holds a value for that key."""
    cfg = config_from_dict(tiny_params("v1"), ["train.v1.lambda_cls=tuned", "train.v1.lambda_rec=5"])
    assert tuned_keys(cfg) == ["train.v1.lambda_cls"] and searched(cfg) == ["lambda_cls"]
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(tuned_yaml(_best({"train.v1.lambda_cls": 1.7, "train.v1.lambda_rec": 87.8})))
    out = resolve_tuned(cfg, tuned)
    assert (out.train.v1.lambda_cls, out.train.v1.lambda_rec) == (1.7, 5.0)
    assert tuned_keys(out) == []
    both = resolve_tuned(config_from_dict(tiny_params("v1"), [f"train.v1.{k}=tuned" for k in SEARCH["v1"]]), tuned)
    assert (both.train.v1.lambda_cls, both.train.v1.lambda_rec) == (1.7, 87.8)
    fixed = config_from_dict(tiny_params("v1"), ["train.v1.lambda_cls=2", "train.v1.lambda_rec=3"])
    assert resolve_tuned(fixed, tmp_path / "absent.yaml") is fixed, "no 'tuned' weight: tuned.yaml is not read"


def test_a_v1_sweep_never_reaches_a_v2_model(tmp_path):
    cfg = config_from_dict(tiny_params("v2"), ["train.v2.lambda_sty=tuned"])
    assert tuned_keys(cfg) == ["train.v2.lambda_sty"]
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(tuned_yaml(_best({"train.v1.lambda_cls": 1.7, "train.v1.lambda_rec": 87.8})))
    with pytest.raises(ConfigError, match=r"^train.v2.lambda_sty: set to 'tuned' but .*tuned.yaml has no value"):
        resolve_tuned(cfg, tuned)


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist; run the sweep first (`dvc repro tune` or `stargan tune`)"),
    ("train: {v1: {lambda_rec: 3.0}}\n", "train.v1.lambda_cls: set to 'tuned' but"),
    ("train: {v1: {lambda_cls: tuned, lambda_rec: 3.0}}\n", "train.v1.lambda_cls is 'tuned'"),
    ("train: {v1: {lambda_cls: -1, lambda_rec: 3.0}}\n", "train.v1.lambda_cls: -1.0 is below the minimum 0"),
    ("train: [\n", "not valid YAML"),
])
def test_an_unusable_tuned_yaml_is_one_clear_error(tmp_path, content, fragment):
    tuned = tmp_path / "tuned.yaml"
    if content is not None:
        tuned.write_text(content)
    with pytest.raises(ConfigError) as e:
        resolve_tuned(config_from_dict(tiny_params("v1"), [f"train.v1.{k}=tuned" for k in SEARCH["v1"]]), tuned)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_tuned_yaml_is_the_nested_params_form_and_empty_without_a_sweep():
    text = tuned_yaml(_best({"train.v1.lambda_cls": 0.92, "train.v1.lambda_rec": 87.78}))
    assert yaml.safe_load(text) == {"train": {"v1": {"lambda_cls": 0.92, "lambda_rec": 87.78}}}
    empty = {"model": "v1", "searched": [], "best": {}, "tuned": {}, "trials": []}
    assert yaml.safe_load(tuned_yaml(empty)) in (None, {})
    assert metrics_summary(empty) == {"trials": 0}


def _check_sweep(root: Path, best: dict, model: str, names: list[str]) -> None:
    from mlflow.tracking import MlflowClient

    cfg = load_config(root / "params.yaml")
    assert best["model"] == model and best["searched"] == names and len(best["trials"]) == 2
    for tr in best["trials"]:
        assert set(tr["lambdas"]) == set(names)
        for k, v in tr["lambdas"].items():
            lo, hi = getattr(cfg.tune, k)
            assert lo <= v <= hi, f"{k}={v} outside [{lo}, {hi}]"
        assert tr["error"] is None and tr["objective"] is not None
    assert set(best["best"]) == set(names)
    assert yaml.safe_load((root / "tuned.yaml").read_text()) == {
        "train": {model: {k: pytest.approx(v) for k, v in best["best"].items()}}}
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    parent = client.get_run(best["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for ch in children:
        assert set(names) <= set(ch.data.params)
        assert "objective" in ch.data.metrics and ch.info.status == "FINISHED"


@pytest.mark.slow
def test_sweep_searches_the_tuned_weight_and_train_uses_its_best_and_the_fixed_number(tmp_path):
    """λ_cls 'tuned', λ_rec 7: the sweep searches λ_cls only (every trial trains with λ_rec 7), its
    best goes to tuned.yaml, and the train stage trains and records exactly (best λ_cls, 7)."""
    from mlflow.tracking import MlflowClient

    from stargan.training.checkpoint import load_state

    root = build_data(tmp_path / "proj", {"train": {"v1": {"lambda_cls": "tuned", "lambda_rec": 7.0}},
                                          "tune": {"num_samples": 2, "iters_per_trial": 4, "reports_per_trial": 2,
                                                   "val_images": 4}})
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "tune.py")], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = json.loads((root / "models" / "tune" / "best.json").read_text())
    _check_sweep(root, best, "v1", ["lambda_cls"])
    summary = json.loads((root / "reports" / "tune.json").read_text())
    assert summary["trials"] == 2 and summary["best_objective"] == best["best_value"]
    train = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py")], cwd=root, env=env(),
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-4000:]
    lam_cls = best["best"]["lambda_cls"]
    assert f"loss weights: lambda_cls={lam_cls:.6g} (tuned.yaml), lambda_rec=7 (params)" in train.stdout
    state = load_state(root / "models" / "train" / "checkpoint.pt")
    assert state.config["train"]["v1"]["lambda_cls"] == pytest.approx(lam_cls)
    assert state.config["train"]["v1"]["lambda_rec"] == 7.0
    run = MlflowClient(f"sqlite:///{root / 'mlruns.db'}").get_run(state.extra["mlflow_run_id"])
    assert float(run.data.params["v1.lambda_cls"]) == pytest.approx(lam_cls)
    assert float(run.data.params["v1.lambda_rec"]) == 7.0
    assert run.data.tags["stargan.tuned"] == "train.v1.lambda_cls"


@pytest.mark.slow
def test_tune_over_ray_train(tmp_path):
    """tune.use_ray_train: every trial is a TorchTrainer run (the cluster path); same outputs."""
    root = build_data(tmp_path / "proj", {"train": {"v1": {"lambda_cls": "tuned", "lambda_rec": "tuned"}},
                                          "tune": {"num_samples": 2, "iters_per_trial": 4, "reports_per_trial": 2,
                                                   "val_images": 4, "use_ray_train": True}})
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "tune.py")], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = json.loads((root / "models" / "tune" / "best.json").read_text())
    assert best["trainable"] == "ray_train"
    _check_sweep(root, best, "v1", ["lambda_cls", "lambda_rec"])
