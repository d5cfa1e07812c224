"""Slow: the classifier and evaluate stages on a tiny real project after real (tiny) training.

v1: `stargan train --local` -> pipelines/classifier.py -> pipelines/evaluate.py, offline: the FID
entry must be an honest "unavailable" with the setting that fixes it. v2: FID and LPIPS run for
real through the library with randomly initialised networks saved under the official file
names (the sha256 check of the official files is bypassed for them; nothing is downloaded).
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stargan.config import load_config
from stargan.evaluation.classifier import evaluate_real, train_classifier
from tiny_project import build_data, env, run_stage

pytestmark = pytest.mark.slow

OFFLINE = {"evaluate": {"download_weights": False, "classifier_iters": 40, "classifier_width": 8}}


def _train(root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stargan.cli", "train", "--params", "params.yaml", "--local"],
                          cwd=root, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_classifier_is_accurate_on_real_synthetic_images(tmp_path):
    # 40 RaFD-like identities x the default's 4 expressions (160 images, as 20 x 8 were before): with
    # 4 identities the judge saw 3 faces per expression and its accuracy on the one held-out face swung
    # between 0.25 and 1.0; with 20 x 4 it learnt 64 images by heart (0.69 on 16 held out).
    root = build_data(tmp_path, {"synthetic": {"rafd_identities": 40}})
    for ds, floor in (("celeba", 0.9), ("rafd", 0.8)):
        shard = root / "data" / "shards" / ds
        clf = train_classifier(shard, dataset=ds, image_size=16, width=8, iters=120, batch_size=32, lr=3e-3)
        acc = evaluate_real(clf, shard, "test")["accuracy"]
        print(f"{ds}: classifier accuracy on real test images {acc:.3f}")
        # measured 2026-12-03: celeba 1.00 (16 test images), rafd 1.00 (the 4 held-out identities)
        assert acc >= floor


def test_v1_train_classifier_evaluate_stages_offline(tmp_path):
    root = build_data(tmp_path, OFFLINE)
    _train(root)
    run_id, uri = _attach_mlflow_run(root)
    t0 = time.time()
    run_stage(root, "classifier")
    proc = run_stage(root, "evaluate")
    assert time.time() - t0 < 240
    rep = json.loads((root / "reports" / "eval.json").read_text())
    assert rep["model"] == "v1" and rep["step"] == 6
    acc = rep["target_accuracy"]
    assert {"mean", "real/celeba", "real/rafd", "celeba/Male", "celeba/Male/others_kept", "rafd/happy",
            "celeba_to_rafd/angry", "rafd_to_celeba/Male"} <= set(acc)
    cf = rep["counterfactual"]
    assert {"l1", "identity_l1", "psnr", "ssim", "l1_gain", "celeba/Black_Hair/l1", "rafd/sad/identity_ssim",
            "celeba/render_floor_l1"} <= set(cf)
    assert rep["cycle"]["l1"] > 0 and "mean" in rep["fid_classifier_features"]
    fid = rep["unavailable"]["fid"]
    assert "pt_inception-2015-12-05-6726825d.pth not found" in fid["reason"]
    assert "evaluate.weights_dir" in fid["fix"] and "fid" not in rep
    assert "lpips" in rep["not_applicable"]
    out = proc.stdout + proc.stderr
    assert re.search(r"\[evaluate\] metrics: \d+/\d+ metrics \(\d+%\).*fid: unavailable: .*Fix: ", out), out[-3000:]
    assert out.count("pt_inception-2015-12-05-6726825d.pth not found") == 1, "said once"
    # the console names every target whose accuracy the judge cannot measure (a 40-step judge: some)
    unmeasured = [k for k in rep["judge"]["not_meaningful"] if not k.endswith("mean")]
    said = re.search(r"\[evaluate\] the judge cannot measure (.*) \(judge_ok false", out)
    assert (said.group(1).split(", ") if said else []) == unmeasured, out[-3000:]
    rows = list(csv.DictReader((root / "reports" / "eval_accuracy.csv").open()))
    assert len(rows) == len([k for k in acc if k.count("/") == 1 and not k.startswith("real/")
                             and not k.endswith("/mean")])
    assert (root / "reports" / "eval_fid.csv").read_text().strip() == "task,fid"
    # DVC's charts: one per metric that ran (no empty FID chart), value against target
    bars = {p.name: list(csv.DictReader(p.open())) for p in (root / "plots" / "eval").glob("*.csv")}
    assert set(bars) == {"target_accuracy.csv", "counterfactual_l1_gain_over_input.csv", "fid_classifier_features.csv"}
    assert [r["target"] for r in bars["target_accuracy.csv"]] == [r["name"] for r in rows]
    assert [float(r["value"]) for r in bars["target_accuracy.csv"]] == [float(r["accuracy"]) for r in rows]
    head = json.loads((root / "metrics" / "headline.json").read_text())
    assert head["accuracy"] == pytest.approx(acc["mean"], abs=1e-4) and "fid" not in head
    assert head["beats_input"] == pytest.approx(cf["fraction_beating_identity"], abs=1e-4)
    assert set(head) == {"accuracy", "worst_accuracy", "judge", "beats_input", "l1_gain", "kept_ratio", "fid_cls"}
    per_target = [float(r["accuracy"]) for r in rows]
    assert head["worst_accuracy"] == pytest.approx(min(per_target), abs=1e-4)
    assert head["kept_ratio"] == pytest.approx(cf["kept_l1"] / cf["identity_l1"], abs=1e-3)
    grids = sorted(p.name for p in (root / "plots" / "eval_grids").glob("*.png"))
    assert grids == ["counterfactual_celeba.png", "counterfactual_rafd.png", "samples_celeba.png", "samples_rafd.png"]
    assert json.loads((root / "reports" / "classifier.json").read_text())["celeba"]["accuracy"] > 0.5
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    logged = client.get_run(run_id).data
    assert logged.metrics["eval/target_accuracy/mean"] == pytest.approx(acc["mean"], abs=1e-6)
    assert "eval.unavailable.fid" in logged.tags
    names = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert "eval/eval.json" in names and "eval/grids" in names


def _attach_mlflow_run(root: Path) -> tuple[str, str]:
    """What the Ray trainer does: an MLflow run whose id the checkpoint carries."""
    from stargan.tracking import Tracker, resolve_artifact_root, resolve_tracking_uri
    from stargan.training.checkpoint import load_state, save_state

    uri = resolve_tracking_uri(None, root)
    run_id = Tracker(uri, "stargan", resolve_artifact_root("mlartifacts", root)).start_run("tiny", {"train": {"model": "v1"}})
    ckpt = root / "models" / "train" / "checkpoint.pt"
    state = load_state(ckpt)
    state.extra["mlflow_run_id"] = run_id
    save_state(state, ckpt)
    return run_id, uri


def _random_weights(folder: Path) -> None:
    from stargan.evaluation.inception import FIDInceptionV3
    from stargan.evaluation.lpips import LPIPS
    from stargan.evaluation.weights import ALEXNET, FID_INCEPTION, LPIPS_ALEX_LIN

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), folder / FID_INCEPTION.filename)
    net = LPIPS()
    torch.save({f"features.{k}": v for k, v in net.net.features.state_dict().items()}, folder / ALEXNET.filename)
    torch.save({f"lin{i}.model.1.weight": getattr(net, f"lin{i}").model[1].weight.abs() for i in range(5)},
               folder / LPIPS_ALEX_LIN.filename)


class _First64(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[:, :64]


def test_v2_latent_and_reference_fid_and_lpips(tmp_path, monkeypatch):
    over = {"train": {"model": "v2", "datasets": ["celeba"], "v2": {"domains": ["Black_Hair", "Blond_Hair"]}},
            "evaluate": {**OFFLINE["evaluate"], "weights_dir": "weights", "num_outs_per_domain": 2,
                         "max_images": 2, "grid_images": 2}}
    t0 = time.time()
    root = build_data(tmp_path, over)
    _random_weights(root / "weights")
    t1 = time.time()
    _train(root)
    t2 = time.time()
    run_stage(root, "classifier")
    t3 = time.time()
    monkeypatch.setattr("stargan.evaluation.weights._verify", lambda path, spec: None)
    # CPU time only: 299 px inputs cost 16x the 75 px ones, and scipy's sqrtm of two 2048x2048
    # covariances takes ~15 s per task; the real file and network still run, on the first 64 features
    from stargan.evaluation import metric_fid

    monkeypatch.setattr("stargan.evaluation.inception.INPUT_SIZE", 75)
    real_load = metric_fid.load_fid_inception
    monkeypatch.setattr(metric_fid, "load_fid_inception", lambda path, dev: _First64(real_load(path, dev)))
    monkeypatch.setattr(metric_fid, "FEATURE_DIM", 64)
    from stargan.evaluation.evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(load_config(root / "params.yaml"), root)
    print(f"data {t1 - t0:.1f}s, train {t2 - t1:.1f}s, classifier {t3 - t2:.1f}s, evaluate {time.time() - t3:.1f}s")
    assert rep["unavailable"] == {}, rep["unavailable"]
    for metric in ("fid", "fid_classifier_features", "lpips"):
        for mode in ("latent", "reference"):
            assert f"{mode}/mean" in rep[metric]
            assert f"{mode}/Black_Hair_to_Blond_Hair" in rep[metric]
    assert rep["lpips"]["latent/mean"] > 0
    assert {"latent/mean", "reference/mean", "real/celeba"} <= set(rep["target_accuracy"])
    assert {"latent/l1", "reference/l1", "identity_l1"} <= set(rep["counterfactual"])
    assert rep["cycle"]["l1"] > 0
    assert sorted(p.name for p in (root / "plots" / "eval_grids").glob("*.png")) == ["latent.png", "reference.png"]
