"""What the user sets is what trains, in a real DVC repository (git + dvc, the project's dvc.yaml
and stage scripts, tiny params): `dvc exp run -S` of a loss weight reaches the checkpoint, the
MLflow run and `dvc exp show`; the sweep only searches the weights set to 'tuned'; and a `--temp`
experiment's MLflow run lands in the main repository's store, tagged with the git commit and the
experiment name, instead of vanishing with DVC's temporary workspace."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from stargan.training.checkpoint import load_state
from test_reliability_dvc import dvc, make_repo

pytestmark = pytest.mark.slow

SWEEP = {"train": {"v1": {"lambda_cls": "tuned", "lambda_rec": "tuned"}},
         "tune": {"num_samples": 2, "iters_per_trial": 4, "reports_per_trial": 2, "val_images": 4}}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def training_runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    exp = client.get_experiment_by_name("stargan")
    return [r for r in client.search_runs([exp.experiment_id]) if "stargan.run_name" in r.data.tags]


def exp_params(root: Path, name: str) -> dict:
    """`dvc exp show --json`: the params (per params file, flattened) of experiment ``name``."""
    rows = json.loads(dvc(root, "exp", "show", "--json").stdout)
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") == name:
                    params = rev["data"]["params"]
                    return {f: _flatten(params[f]["data"]) for f in params}
    raise AssertionError(f"experiment {name} not in dvc exp show: {rows}")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_plots_and_metrics(root: Path) -> None:
    """`dvc plots show`: every plot once, each with data on both axes; `dvc metrics show`: one
    row of headline numbers that fits a terminal (it was ~15,500 characters a line)."""
    shown = json.loads(dvc(root, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    plots = shown["data"]
    assert sorted(plots) == sorted({*plots}), "no plot twice"
    assert "plots/train_loss.csv" in plots
    bars = {k for k in plots if k.startswith("plots/eval/")}
    assert bars == {"plots/eval/target_accuracy.csv", "plots/eval/counterfactual_l1_gain_over_input.csv",
                    "plots/eval/fid_classifier_features.csv"}, "one chart per metric that ran, no empty FID chart"
    images = {k for k in plots if k.startswith("plots/eval_grids/")}
    assert len(images) == 4 and all(plots[k][0]["type"] == "image" for k in images)
    fid = (root / "plots" / "eval" / "fid_classifier_features.csv").read_text().splitlines()
    assert fid[0] == "target,value" and all(row.split(",")[0] not in ("", "/") for row in fid[1:]), fid
    for name in ["plots/train_loss.csv", *bars]:
        (spec,) = plots[name]
        enc, rows = spec["content"]["encoding"], spec["content"]["data"]["values"]
        x, y = enc["x"]["field"], enc.get("y", {}).get("field", "dvc_inferred_y_value")   # several y: one field
        assert rows and all(r.get(x) not in (None, "") and r.get(y) not in (None, "") for r in rows), name
        quantitative = x if enc["x"]["type"] == "quantitative" else y
        assert all(float(r[quantitative]) == float(r[quantitative]) for r in rows), f"{name}: numbers on the value axis"
        assert len({r[x] for r in rows}) > 1 or len(rows) == 1, f"{name}: not every point at one x"
    table = dvc(root, "metrics", "show").stdout
    assert max(len(line) for line in table.splitlines()) <= 120, table
    assert "metrics/headline.json" in table and "accuracy" in table and "beats_input" in table


def test_exp_run_values_train_and_temp_experiments_keep_their_mlflow_runs(tmp_path):
    root = make_repo(tmp_path / "repo", SWEEP)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tiny project")
    dvc(root, "repro", "evaluate")
    _check_plots_and_metrics(root)
    swept = yaml.safe_load((root / "tuned.yaml").read_text())["train"]["v1"]
    assert set(swept) == {"lambda_cls", "lambda_rec"}
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    baseline = git(root, "rev-parse", "HEAD")

    # The README's example: λ_rec 5 trains as 5 (before: the sweep's λ_rec overwrote it).
    dvc(root, "exp", "run", "-n", "rec5", "-S", "train.v1.lambda_rec=5", "train")
    tuned = yaml.safe_load((root / "tuned.yaml").read_text())["train"]["v1"]
    assert set(tuned) == {"lambda_cls"}, "only the weight still set to 'tuned' was searched"
    state = load_state(root / "models" / "train" / "checkpoint.pt")
    assert state.config["train"]["v1"]["lambda_rec"] == 5.0
    assert state.config["train"]["v1"]["lambda_cls"] == pytest.approx(tuned["lambda_cls"])
    (run,) = [r for r in training_runs(root) if r.info.run_id == state.extra["mlflow_run_id"]]
    assert float(run.data.params["v1.lambda_rec"]) == 5.0
    assert float(run.data.params["v1.lambda_cls"]) == pytest.approx(tuned["lambda_cls"])
    assert run.data.tags["stargan.dvc_experiment"] == "rec5"
    assert run.data.tags["mlflow.source.git.commit"] == baseline
    shown = exp_params(root, "rec5")
    assert shown["params.yaml"]["train.v1.lambda_rec"] == 5
    assert shown["tuned.yaml"] == {"train.v1.lambda_cls": pytest.approx(tuned["lambda_cls"])}
    diff = dvc(root, "params", "diff", "HEAD").stdout
    assert "train.v1.lambda_rec" in diff and "tuned.yaml" in diff

    # A --temp experiment runs in .dvc/tmp/exps/<tmp>, which DVC deletes afterwards.
    before = {r.info.run_id for r in training_runs(root)}
    dvc(root, "exp", "run", "--temp", "-n", "fixed", "-S", "train.v1.lambda_cls=0.75", "-S", "train.v1.lambda_rec=3",
        "train")
    after = training_runs(root)
    new = [r for r in after if r.info.run_id not in before]
    assert len(new) == 1, ("the temp experiment's training run is in the main repository's store",
                           [(r.info.run_name, r.data.tags.get("stargan.dvc_experiment")) for r in after], before)
    (run,) = new
    assert (float(run.data.params["v1.lambda_cls"]), float(run.data.params["v1.lambda_rec"])) == (0.75, 3.0)
    assert run.data.tags["stargan.dvc_experiment"] == "fixed" and run.data.tags["stargan.tuned"] == "-"
    assert run.data.tags["mlflow.source.git.commit"] == baseline
    assert run.info.status == "FINISHED"
    artifact = run.info.artifact_uri.removeprefix("file://")
    assert Path(artifact).is_relative_to(root / "mlartifacts") and Path(artifact, "checkpoint").is_dir()
    assert not list((root / ".dvc" / "tmp").rglob("mlruns.db"))
    assert exp_params(root, "fixed")["tuned.yaml"] == {}, "no weight 'tuned': no sweep, an empty tuned.yaml"
