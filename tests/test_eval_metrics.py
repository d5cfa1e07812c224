"""The metrics on a tiny real project (synthetic data built by the real stages; untrained nets):
synthetic ground truth, ranking of a good translation above doing nothing, unavailable paths,
the registry, and the cheap sweep objective."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stargan.config import load_config
from stargan.evaluation import calc_metric, evaluate_model, list_metrics, quick_objective
from stargan.evaluation import metric_counterfactual
from stargan.evaluation.classifier import (ResNetClassifier, Classifier, classifier_path, load_classifier,
                                           save_classifier)
from stargan.evaluation.tasks import EvalContext, ground_truth
from stargan.inference import V1Model
from stargan.training.labels import LabelLayout
from stargan.training.nets import build_v1
from tiny_project import build_data, draw_untrained_change


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_data(tmp_path_factory.mktemp("evalproj"), {"evaluate": {"download_weights": False}})


def _model(root: Path, overrides=()) -> V1Model:
    cfg = load_config(root / "params.yaml", list(overrides))
    specs = []
    for ds in cfg.train.datasets:
        m = json.loads((root / "data" / "shards" / ds / "manifest.json").read_text())
        specs.append((ds, m["label_names"], m["label_kind"]))
    layout = LabelLayout(specs)
    nets, _ = build_v1(cfg.train, layout)
    draw_untrained_change(nets.G)
    return V1Model(G=nets.G.eval().requires_grad_(False), layout=layout, config=cfg, step=0)


def _ctx(root: Path, model: V1Model, max_images: int = 8) -> EvalContext:
    return EvalContext(model=model, cfg=model.config, repo_root=root, device=torch.device("cpu"), max_images=max_images)


def test_registry_lists_every_metric():
    assert {"target_accuracy", "fid", "fid_classifier_features", "counterfactual", "cycle", "lpips"} <= set(list_metrics())
    assert "lpips" not in list_metrics("v1")


def test_rendered_unchanged_parameters_reproduce_the_test_images(root):
    ctx = _ctx(root, _model(root))
    for ds in ("celeba", "rafd"):
        gt = ground_truth(ctx, ds)
        batch = next(ctx.batches(ds))
        truth = gt.batch(batch, None, None, ctx.device)
        err = ((truth - batch["image"]).abs().mean() / 2).item()       # L1 in [0, 1] units
        assert err < 0.02, f"{ds}: the renderer + stored matrix do not reproduce the input (L1 {err:.4f})"


def test_counterfactual_ranks_a_good_translation_above_the_identity_baseline(root, monkeypatch):
    ctx = _ctx(root, _model(root))
    real = metric_counterfactual.v1_translations

    def oracle(ctx, ds):                      # "G" = the true counterfactual + small noise
        gt = ground_truth(ctx, ds)
        g = torch.Generator().manual_seed(0)
        for batch, outs in real(ctx, ds):
            new = []
            for t, _ in outs:
                names = list(ctx.model.layout.datasets[t.dataset_idx].label_names)
                if not t.own and ctx.model.layout.datasets[t.dataset_idx].kind == "multi":
                    new.append((t, batch["image"]))         # no ground truth there (skipped)
                    continue
                truth = gt.batch(batch, names, t.labels, ctx.device)
                new.append((t, (truth + 0.03 * torch.randn(truth.shape, generator=g)).clamp(-1, 1)))
            yield batch, new

    monkeypatch.setattr(metric_counterfactual, "v1_translations", oracle)
    good = calc_metric("counterfactual", ctx)
    assert good.available, good.reason
    r = good.results
    assert r["l1"] < r["identity_l1"] and r["ssim"] > r["identity_ssim"] and r["psnr"] > r["identity_psnr"]
    assert r["l1_gain"] > 0 and r["celeba/Male/l1_gain"] > 0 and r["rafd/happy/l1_gain"] > 0
    assert "celeba_to_rafd/angry/l1" in r                   # CelebA faces with RaFD expressions
    assert "rafd_to_celeba" in good.meta["skipped"]          # ... but not the reverse, with the reason
    assert r["celeba/render_floor_l1"] < 0.02
    assert r["fraction_beating_identity"] == 1.0 and r["targets_beating_identity"] == r["targets"] > 10
    # A hair colour the face already has changes nothing: those pairs are "kept", not scored
    # against the identity baseline (whose error there is the render floor, unbeatable).
    hair_kept = sum(r[f"celeba/{h}/kept_images"] for h in ("Black_Hair", "Blond_Hair", "Brown_Hair"))
    n = r["celeba/Male/images"]
    assert r["celeba/Male/kept_images"] == 0 and r["rafd/happy/images"] > 0
    assert hair_kept == n and all(r[f"celeba/{h}/images"] + r[f"celeba/{h}/kept_images"] == n
                                  for h in ("Black_Hair", "Blond_Hair", "Brown_Hair"))
    kept = [h for h in ("Black_Hair", "Blond_Hair", "Brown_Hair") if r[f"celeba/{h}/kept_images"]]
    assert kept and all(r[f"celeba/{h}/kept_l1"] < 0.05 for h in kept)   # the oracle's noise only

    def lazy(ctx, ds):                        # "G" = the input unchanged: no gain at all
        for batch, outs in real(ctx, ds):
            yield batch, [(t, batch["image"]) for t, _ in outs]

    monkeypatch.setattr(metric_counterfactual, "v1_translations", lazy)
    r2 = calc_metric("counterfactual", ctx).results
    assert r2["l1_gain"] == pytest.approx(0.0, abs=1e-9)
    assert r2["targets_beating_identity"] == 0 and r2["fraction_beating_identity"] == 0.0
    assert all(r2[f"celeba/{h}/kept_l1"] == pytest.approx(r["celeba/render_floor_l1"], abs=0.01) for h in kept)
    assert r2["l1"] > r["l1"]


def test_real_data_has_no_ground_truth(root):
    model = _model(root, ["data.datasets.celeba.source=local", "data.datasets.celeba.path=x",
                          "data.datasets.rafd.source=local", "data.datasets.rafd.path=y"])
    res = calc_metric("counterfactual", _ctx(root, model))
    assert not res.available and "not synthetic" in res.reason


def test_without_classifier_accuracy_is_unavailable_and_names_the_stage(root):
    res = calc_metric("target_accuracy", _ctx(root, _model(root)))
    assert not res.available
    assert "no attribute classifier" in res.reason and "dvc repro classifier" in res.fix


def test_classifier_round_trips_through_a_weights_only_file(tmp_path):
    net = ResNetClassifier(5, width=4, image_size=16).eval()
    clf = Classifier(net, "celeba", ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"], "multi", 16, 4, {})
    path = save_classifier(clf, classifier_path(tmp_path, "celeba"))
    torch.load(path, weights_only=True)
    back = load_classifier(path)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(back.net(x), net(x)) and back.hair == [0, 1, 2]
    pred = back.predict(x)
    assert torch.all(pred[:, :3].sum(1) == 1)                    # hair colours are exclusive


def test_evaluate_model_reports_numbers_and_honest_gaps(root):
    model = _model(root)
    report = evaluate_model(model, model.config, root, max_images=4, metrics=["fid", "cycle", "counterfactual"])
    assert report["unavailable"]["fid"]["fix"].startswith("set evaluate.weights_dir")
    assert "downloads are off" in report["unavailable"]["fid"]["reason"]
    assert "fid" not in report
    assert report["cycle"]["l1"] > 0 and "celeba/Male/l1" in report["cycle"]
    assert {"l1", "identity_l1", "ssim", "psnr"} <= set(report["counterfactual"])


def test_quick_objective_is_cheap_and_complete(root):
    model = _model(root)
    out = quick_objective(model, model.config, root, max_images=4)
    assert out["objective"] == out["counterfactual_l1"] > 0
    assert "target_accuracy" in out["unavailable"]
    assert out["seconds"] < 30


def test_headline_is_seven_numbers_and_real_fid_replaces_the_stand_in():
    """`dvc metrics show` must fit a 120-column terminal: the headline keeps seven columns, and
    the classifier-feature FID appears only when the Inception FID could not run."""
    from stargan.evaluation.report import headline

    report = {"target_accuracy": {"mean": 0.5, "celeba/Male": 0.25, "celeba/mean": 0.5, "rafd/happy": 0.75,
                                  "real/celeba": 1.0, "real/rafd": 0.5},
              "counterfactual": {"fraction_beating_identity": 0.1, "l1_gain": -0.05, "kept_l1": 0.08,
                                 "identity_l1": 0.04},
              "cycle": {"l1": 0.08}, "fid_classifier_features": {"mean": 79.6}}
    head = headline(report)
    assert head == {"accuracy": 0.5, "worst_accuracy": 0.25, "judge": 0.75, "beats_input": 0.1,
                    "l1_gain": -0.05, "kept_ratio": 2.0, "fid_cls": 79.6}
    with_fid = headline({**report, "fid": {"mean": 123.4567}})
    assert with_fid["fid"] == 123.4567 and "fid_cls" not in with_fid and len(with_fid) == 7
    header = "  ".join(["metrics/headline.json", *(f"{k:<{max(len(k), 8)}}" for k in with_fid)])
    assert len(header) <= 120, header
