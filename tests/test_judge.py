"""The judge (the evaluation's attribute classifier) and the verdict on each target accuracy:
ResNet-18 built at the configured size, trained by the classifier step on a tiny real project,
its per-label scores on real test images next to every target accuracy in reports/eval.json and
the CSV, and ``judge_ok`` set exactly when its balanced accuracy is below the threshold."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from stargan.config import ConfigError, EvaluateConfig, config_from_dict, load_config
from stargan.data.domains import resolve_domains
from stargan.evaluation import calc_metric
from stargan.evaluation.classifier import (Classifier, classifier_path, load_classifier, save_classifier,
                                           train_classifiers)
from stargan.evaluation.classifier_nets import ARCHS, ResNetClassifier, build_classifier_net
from stargan.evaluation.judge import LabelCounts, exclusive_counts, verdict
from stargan.evaluation.metric_accuracy import _judge
from stargan.evaluation.metrics import MetricResult
from stargan.evaluation.report import build_report, write_tables
from stargan.evaluation.tasks import EvalContext
from stargan.inference import V1Model, V2Model
from stargan.training.labels import LabelLayout
from stargan.training.nets import build_v1, build_v2
from tiny_project import build_data

#: torchvision's resnet18() has 11,689,512 parameters, 513,000 of them in its 1000-class fc.
RESNET18_BACKBONE = 11_689_512 - 513_000


# ------------------------------------------------------------------------------- the network

def test_resnet18_is_the_published_network_at_width_64():
    net = build_classifier_net("resnet18", 5, 64, 64)
    assert sum(p.numel() for p in net.parameters()) == RESNET18_BACKBONE + 512 * 5 + 5
    conv, pool = net.stem[0], net.stem[3]
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2) and isinstance(pool, torch.nn.MaxPool2d)
    assert net.layers(net.stem(torch.zeros(1, 3, 64, 64))).shape == (1, 512, 2, 2)     # 64 px -> 2x2 at layer 4


def test_width_sizes_the_network_and_small_keeps_resolution_below_96px():
    narrow = build_classifier_net("resnet18", 5, 16, 64)
    assert narrow.feature_dim == 128 and narrow.stem[0].out_channels == 16
    small = build_classifier_net("small", 5, 16, 64)
    assert small.stem[0].kernel_size == (3, 3) and len(small.stem) == 3                 # no max pool
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in narrow.parameters())
    big_small, big_resnet = build_classifier_net("small", 5, 16, 128), build_classifier_net("resnet18", 5, 16, 128)
    assert [p.shape for p in big_small.parameters()] == [p.shape for p in big_resnet.parameters()]
    assert EvaluateConfig.__dataclass_fields__["classifier_arch"].metadata["choices"] == ARCHS
    with pytest.raises(ValueError, match="expected one of small, resnet18"):
        build_classifier_net("vgg", 5, 8, 64)


@pytest.mark.parametrize("override, fragment", [
    ("evaluate.classifier_arch=vgg16", "evaluate.classifier_arch: 'vgg16' is not allowed; choose one of small, resnet18"),
    ("evaluate.judge_min_accuracy=1.5", "evaluate.judge_min_accuracy: 1.5 is above the maximum 1.0"),
])
def test_bad_judge_params_are_one_error_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, [override])
    assert fragment in str(e.value)


def test_a_judge_saved_before_the_arch_existed_loads_as_small(tmp_path):
    net = ResNetClassifier(5, width=4, image_size=16).eval()
    clf = Classifier(net, "celeba", ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"], "multi", 16, 4, {})
    path = save_classifier(clf, classifier_path(tmp_path, "celeba"))
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta_json"])
    del meta["arch"]
    payload["meta_json"] = json.dumps(meta)
    torch.save(payload, path)
    back = load_classifier(path)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert back.arch == "small" and torch.equal(back.net(x), net(x))
    meta["arch"] = "vgg"
    payload["meta_json"] = json.dumps(meta)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="classifier architecture 'vgg' is not one of small, resnet18"):
        load_classifier(path)


# ------------------------------------------------------------------------ the judge's scores

def test_balanced_accuracy_exposes_a_judge_blind_to_a_rare_label():
    """Blond on 1 face in 10: "never blond" is 90 % accurate and no judge at all."""
    truth = torch.zeros(10, 1)
    truth[0] = 1
    counts = LabelCounts(["Blond_Hair"])
    counts.add(torch.zeros(10, 1), truth)
    s = counts.scores()["Blond_Hair"]
    assert s == {"accuracy": 0.9, "balanced_accuracy": 0.5, "images": 10, "positives": 1}
    assert verdict(s, 0.9) == (0.9, 0.5, False)


def test_hair_colours_are_judged_only_on_faces_with_exactly_one():
    names = ["Black_Hair", "Blond_Hair", "Male"]
    truth = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=torch.float32)
    pred = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float32)
    counts = LabelCounts(names)
    counts.add(pred, truth, exclusive_counts(truth, [0, 1]))
    s = counts.scores()
    # faces 0 (black) and 2 (blond) count for the hair columns; face 2 is called black
    assert s["Black_Hair"] == {"accuracy": 0.5, "balanced_accuracy": 0.5, "images": 2, "positives": 1}
    assert s["Blond_Hair"]["images"] == 2 and s["Blond_Hair"]["balanced_accuracy"] == 0.5
    assert s["Male"] == {"accuracy": 0.75, "balanced_accuracy": 0.75, "images": 4, "positives": 2}


def test_others_kept_ignores_the_hair_colour_of_a_face_that_has_none_listed():
    from stargan.evaluation.metric_accuracy import others_kept
    from stargan.evaluation.tasks import V1Target

    names = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
    clf = Classifier(ResNetClassifier(5, width=4, image_size=16), "celeba", names, "multi", 16, 4, {})
    # target: flip Male; face 0 is black-haired, face 1 has no listed hair colour (grey, bald)
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.float32)
    t = V1Target("Male", "celeba", 0, 3, labels, labels, True, False)
    said = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 0]], dtype=torch.float32)     # the judge names brown for both
    assert others_kept(clf, said, t).tolist() == [False, True]
    said[:, 4] = 1                                                                    # and both turned young
    assert others_kept(clf, said, t).tolist() == [False, False]


def test_the_flag_is_set_exactly_below_the_threshold():
    score = {"accuracy": 0.95, "balanced_accuracy": 0.9, "images": 40, "positives": 4}
    assert verdict(score, 0.9)[2] is True
    assert verdict(score, 0.9 + 1e-12)[2] is False
    assert verdict({**score, "balanced_accuracy": None}, 0.0)[2] is False      # no positive: cannot be checked
    assert verdict(None, 0.0) == (None, None, False)


# ------------------------------------------------------- the classifier step and the report

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny synthetic project whose judges are ResNet-18s (width 8) trained by the classifier step."""
    over = {"train": {"image_size": 32},
            "evaluate": {"download_weights": False, "classifier_arch": "resnet18", "classifier_width": 8,
                         "classifier_iters": 60, "classifier_lr": 0.003}}
    root = build_data(tmp_path_factory.mktemp("judge"), over)
    train_classifiers(load_config(root / "params.yaml"), root, device="cpu")
    return root


def test_the_classifier_step_trains_a_resnet18_that_learns_the_synthetic_attributes(project):
    clf = load_classifier(classifier_path(project, "celeba"))
    assert clf.arch == "resnet18" and clf.net.stem[0].kernel_size == (7, 7)
    m = clf.metrics
    assert (m["arch"], m["width"], m["iters"]) == ("resnet18", 8, 60)
    assert m["params"] == sum(p.numel() for p in build_classifier_net("resnet18", 5, 8, 32).parameters())
    # hair colour, sex and age are drawn plainly on the synthetic faces: measured 0.9875 (1 thread) and 0.975
    # (2 threads) on the 16 test faces
    assert m["accuracy"] >= 0.9, m
    assert set(m["labels"]) == set(clf.label_names)
    assert all(s["images"] > 0 for s in m["labels"].values())


def _v1_model(root: Path, cfg) -> V1Model:
    specs = []
    for ds in cfg.train.datasets:
        man = json.loads((root / "data" / "shards" / ds / "manifest.json").read_text())
        specs.append((ds, man["label_names"], man["label_kind"]))
    layout = LabelLayout(specs)
    nets, _ = build_v1(cfg.train, layout)
    return V1Model(G=nets.G.eval().requires_grad_(False), layout=layout, config=cfg, step=0)


def _ctx(root: Path, model, cfg) -> EvalContext:
    return EvalContext(model=model, cfg=cfg, repo_root=root, device=torch.device("cpu"), max_images=8)


def _with_threshold(cfg, value: float):
    return dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, judge_min_accuracy=value))


def _judge_of(key: str) -> tuple[str, str]:
    """(dataset whose real images score the judge, label) of a v1 target key."""
    src, label = key.split("/")
    return (src.split("_to_")[1] if "_to_" in src else src), label


def test_every_target_accuracy_has_the_judge_next_to_it(project, tmp_path):
    cfg = load_config(project / "params.yaml")
    ctx = _ctx(project, _v1_model(project, cfg), cfg)
    res = calc_metric("target_accuracy", ctx)
    assert res.available, res.reason
    targets = [f"{r['source']}/{r['target']}" for r in res.tables["eval_accuracy"]]
    assert len(targets) == 18               # 5 + 4 own targets, 4 + 5 cross-dataset ones (the default's)
    for key in targets:
        ds, label = _judge_of(key)
        # the judge's scores on the target's label are those measured on that dataset's real test images
        for k in ("accuracy", "balanced_accuracy"):
            assert res.results.get(f"{key}/judge_{k}") == res.results.get(f"real/{ds}/{label}/{k}")
        assert f"{key}/judge_accuracy" in res.results
    report = build_report({"target_accuracy": res}, ctx)
    assert report["judge"]["min_accuracy"] == 0.9 and report["judge"]["measure"] == "judge_balanced_accuracy"
    assert set(report["judge"]["judge_ok"]) == {*targets, "mean", "celeba/mean", "rafd/mean", "celeba_to_rafd/mean",
                                                "rafd_to_celeba/mean"}
    assert all(f"{k}/judge_accuracy" in report["target_accuracy"] for k in targets)
    write_tables({"target_accuracy": res}, tmp_path / "reports", tmp_path / "plots")
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "reports" / "eval_accuracy.csv").open())}
    assert set(rows) == set(targets)
    for key, row in rows.items():
        assert float(row["judge_accuracy"]) == pytest.approx(res.results[f"{key}/judge_accuracy"], abs=1e-6)
        bal = res.results.get(f"{key}/judge_balanced_accuracy")
        assert (None if row["judge_balanced_accuracy"] == "" else float(row["judge_balanced_accuracy"])) == (
            None if bal is None else pytest.approx(bal, abs=1e-6))
        assert row["judge_ok"] == str(report["judge"]["judge_ok"][key])


def test_judge_ok_is_false_exactly_when_the_judge_scores_below_the_threshold(project):
    cfg = load_config(project / "params.yaml")
    model = _v1_model(project, cfg)
    first = calc_metric("target_accuracy", _ctx(project, model, cfg))
    targets = [f"{r['source']}/{r['target']}" for r in first.tables["eval_accuracy"]]
    scored = sorted({first.results[f"{k}/judge_balanced_accuracy"] for k in targets
                     if f"{k}/judge_balanced_accuracy" in first.results})
    assert len(scored) >= 2, "the tiny judges should score labels differently"
    at = scored[len(scored) // 2]                   # a threshold equal to one measured score, then a hair above it
    verdicts = {}
    for thr in (at, at + 1e-9):
        judged = calc_metric("target_accuracy", _ctx(project, model, _with_threshold(cfg, thr)))
        section, ok = judged.sections["judge"], judged.sections["judge"]["judge_ok"]
        for key in targets:
            bal = judged.results.get(f"{key}/judge_balanced_accuracy")
            truth = judged.results.get(f"{key}/judge_truth_accuracy")
            assert ok[key] == (bal is not None and bal >= thr and (truth is None or truth >= thr)), (key, bal, truth)
        assert ok["mean"] == all(ok[k] for k in targets if "_to_" not in k)
        assert section["not_meaningful"] == sorted(k for k, v in ok.items() if not v)
        assert section["min_accuracy"] == thr
        verdicts[thr] = ok
    at_score = [k for k in targets if first.results.get(f"{k}/judge_balanced_accuracy") == at
                and first.results.get(f"{k}/judge_truth_accuracy", 1.0) >= at]
    assert at_score and all(verdicts[at][k] and not verdicts[at + 1e-9][k] for k in at_score)
    assert any(verdicts[at].values()) and not all(verdicts[at].values())


def test_v2_targets_are_judged_per_domain(project):
    cfg = load_config(project / "params.yaml", ["train.model=v2", "train.datasets=[celeba]",
                                                "train.v2.domains=[Black_Hair, Blond_Hair, Brown_Hair]"])
    man = json.loads((project / "data" / "shards" / "celeba" / "manifest.json").read_text())
    domains = resolve_domains(man["label_names"], man["label_kind"], cfg.train.v2.domains)
    nets, _ = build_v2(cfg.train, domains.num_domains)
    model = V2Model(G=nets.G_ema.eval(), F=nets.F_ema.eval(), E=nets.E_ema.eval(), domains=domains, config=cfg, step=0)
    cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, num_outs_per_domain=1))
    res = calc_metric("target_accuracy", EvalContext(model=model, cfg=cfg, repo_root=project,
                                                     device=torch.device("cpu"), max_images=16))
    assert res.available, res.reason
    ok = res.sections["judge"]["judge_ok"]
    for mode in ("latent", "reference"):
        key = f"{mode}/Black_Hair_to_Blond_Hair"
        bal = res.results[f"{key}/judge_balanced_accuracy"]
        assert bal == res.results["real/celeba/domain/Blond_Hair/balanced_accuracy"]
        assert ok[key] == (bal >= 0.9)
    assert ok["mean"] == all(v for k, v in ok.items() if not k.endswith("mean"))


def test_on_synthetic_data_the_judge_is_also_scored_on_the_true_counterfactuals(project):
    """Real test images cannot tell whether the RaFD judge reads expressions on CelebA faces; the rendered
    truth can: every target whose counterfactual the renderer draws carries the judge's accuracy on it, and
    a judge that fails there makes the target not meaningful even when it knows its own real images."""
    cfg = load_config(project / "params.yaml")
    model = _v1_model(project, cfg)
    res = calc_metric("target_accuracy", _ctx(project, model, cfg))
    targets = [f"{r['source']}/{r['target']}" for r in res.tables["eval_accuracy"]]
    with_truth = {k for k in targets if f"{k}/judge_truth_accuracy" in res.results}
    # every target: own ones, CelebA faces given expressions, and RaFD faces given CelebA attributes
    # (these on the face with only the scored label changed: their other CelebA labels are unknown)
    assert with_truth == set(targets) and any(k.startswith("rafd_to_celeba/") for k in targets)
    assert all(0.0 <= res.results[f"{k}/judge_truth_accuracy"] <= 1.0 for k in with_truth)
    rows = {f"{r['source']}/{r['target']}": r for r in res.tables["eval_accuracy"]}
    assert all(rows[k]["judge_truth_accuracy"] == res.results[f"{k}/judge_truth_accuracy"] for k in with_truth)
    assert "judge_truth_accuracy" in res.sections["judge"]["rule"]


def test_an_rafd_face_given_a_celeba_attribute_is_judged_on_that_label_alone_changed(project):
    """The target zeroes the face's unknown CelebA labels (not one face); the judge's truth is the
    source with only the scored label set, so a female face given Male becomes male and keeps its
    hair, age and expression."""
    from stargan.data.synthetic import FaceParams
    from stargan.evaluation.tasks import NOT_ONE_FACE, ground_truth, v1_judge_truth, v1_targets, v1_truth

    cfg = load_config(project / "params.yaml")
    model = _v1_model(project, cfg)
    ctx = _ctx(project, model, cfg)
    gt, di = ground_truth(ctx, "rafd"), model.layout.index("rafd")
    females = 0
    for batch in [*ctx.batches("rafd", limit=0), *ctx.batches("rafd", split="train", limit=0)]:
        target = next(t for t in v1_targets(model.layout, di, batch["label"]) if t.name == "celeba/Male")
        assert v1_truth(ctx, gt, batch, target) == (None, NOT_ONE_FACE)
        truth = v1_judge_truth(ctx, gt, batch, target)
        for i, params in enumerate(batch["extra"]):
            male = FaceParams.from_dict({**params, "male": True})
            assert torch.equal(truth[i], gt.render(male.to_dict(), batch["matrix"][i]))
            if not params["male"]:
                females += 1
                assert not torch.equal(truth[i], gt.render(params, batch["matrix"][i]))
    assert females


def test_a_judge_that_misreads_the_truth_makes_its_target_not_meaningful():
    res, ok = MetricResult("target_accuracy"), {}
    real = {"accuracy": 1.0, "balanced_accuracy": 1.0, "images": 72, "positives": 18}
    for key, truth in (("celeba_to_rafd/sad", 0.59), ("celeba_to_rafd/happy", 0.9), ("rafd_to_celeba/Male", None)):
        row = {}
        _judge(res, key, real, row, 0.9, ok, truth)
        assert row["judge_ok"] is ok[key] and row.get("judge_truth_accuracy") == truth
    assert ok == {"celeba_to_rafd/sad": False, "celeba_to_rafd/happy": True, "rafd_to_celeba/Male": True}
    assert "rafd_to_celeba/Male/judge_truth_accuracy" not in res.results
    assert res.results["celeba_to_rafd/sad/judge_truth_accuracy"] == 0.59


def test_real_data_has_no_truth_score(project):
    """A dataset that is not synthetic has no rendered counterfactuals: its targets carry the real-image
    scores only (no judge_truth_accuracy, nothing invented)."""
    cfg = load_config(project / "params.yaml")
    real = dataclasses.replace(cfg.data.datasets["celeba"], source="local")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, datasets={**cfg.data.datasets, "celeba": real}))
    res = calc_metric("target_accuracy", _ctx(project, _v1_model(project, cfg), cfg))
    keys = [k for k in res.results if k.endswith("/judge_truth_accuracy")]
    assert keys and not any(k.startswith("celeba") for k in keys)
    # the synthetic RaFD-like faces still have truths, under either dataset's judge
    assert {k.split("/")[0] for k in keys} == {"rafd", "rafd_to_celeba"}


@pytest.mark.slow
def test_the_real_face_judge_benchmark_runs_with_and_without_augmentation(tmp_path):
    """benchmarks/judge_celeba.py (the README's table for real faces) trains through the classifier step's
    own train_classifier; a CelebA-layout folder (synthetic here) goes through the data stages, and each
    run records whether the judge trained with the judge_train augmentations."""
    import subprocess
    import sys

    from stargan.config import SyntheticConfig
    from stargan.data.synthetic import write_celeba_like
    from tiny_project import REPO, env

    write_celeba_like(tmp_path / "celeba", SyntheticConfig(seed=1, celeba_images=120, image_size=48))
    out = tmp_path / "judge.json"
    for flag in ("--augment", "--no-augment"):
        proc = subprocess.run([sys.executable, "benchmarks/judge_celeba.py", "--celeba", str(tmp_path / "celeba"),
                               "--project", str(tmp_path / "project"), "--runs", "small:4:6", "--image-size", "32",
                               "--threads", "1", flag, "--out", str(out), "--append"],
                              cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(r["arch"], r["width"], r["iters"], r["augment"]) for r in runs] == [("small", 4, 6, True),
                                                                                  ("small", 4, 6, False)]
    for r in runs:
        assert set(r["test"]["labels"]) == {"Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"}
        assert r["test"]["images"] > 0 and 0.0 <= r["test"]["mean_accuracy"] <= 1.0


def test_no_truth_score_when_the_renderer_does_not_reproduce_the_data(project):
    """Params that differ from those the data was built with (here the canvas size) render other images
    than the stored ones: no truth score is reported rather than one against wrong renders."""
    cfg = load_config(project / "params.yaml")
    other = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, image_size=cfg.synthetic.image_size * 2))
    res = calc_metric("target_accuracy", _ctx(project, _v1_model(project, other), other))
    assert res.available and not [k for k in res.results if k.endswith("/judge_truth_accuracy")]
    same = calc_metric("target_accuracy", _ctx(project, _v1_model(project, cfg), cfg))
    assert [k for k in same.results if k.endswith("/judge_truth_accuracy")]
