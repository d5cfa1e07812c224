"""Each param re-runs exactly the stages that read it, in a real DVC repository: the project's
dvc.yaml, stages committed to dvc.lock (outputs stood in by placeholder files: `dvc commit`
records them without running anything), then one knob changed at a time and `dvc status` asked
which stages changed. Guards the per-stage params lists (e.g. a longer training must not re-run
the sweep, a sample-grid knob must not retrain the classifier)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_reliability_dvc import dvc
from tiny_project import REPO, merge, write_params

# knob -> new value, and the stages whose params it changes
CASES = {
    "synthetic.celeba_images": (100, {"download"}),
    "synthetic.image_size": (80, {"download", "tune", "evaluate"}),
    "download.timeout_s": (30, {"download", "evaluate"}),
    "align.face_fraction": (0.5, {"align"}),
    "shard.rows_per_group": (8, {"shard"}),
    "shard.uri": ("s3://bucket/shards", {"shard", "train"}),          # published copy: trained from
    "tune.num_samples": (3, {"tune"}),
    "train.num_iters": (99, {"train", "evaluate"}),                 # not the sweep
    "train.log_every": (3, {"train", "evaluate"}),
    "train.v1.lambda_rec": (5.0, {"tune", "train", "evaluate"}),
    "train.mlflow.experiment": ("other", {"train", "evaluate", "export"}),
    "evaluate.grid_images": (4, {"evaluate"}),                       # not the classifier
    "evaluate.classifier_iters": (20, {"classifier", "evaluate"}),
    "evaluate.classifier_arch": ("resnet18", {"classifier", "evaluate"}),
    "evaluate.judge_min_accuracy": (0.8, {"evaluate"}),               # a verdict, not a new judge
    "evaluate.batch_size": (8, {"tune", "classifier", "evaluate"}),
    "export.latency_reps": (2, {"export"}),
}


def _set(params: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    over: dict = {leaf: value}
    for p in reversed(parents):
        over = {p: over}
    return merge(params, over)


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stale") / "repo"
    root.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "pipelines", root / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "stargan").symlink_to(REPO / "stargan", target_is_directory=True)
    write_params(root)
    (root / "tuned.yaml").write_text("{}\n")
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for out in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            path = root / (out if isinstance(out, str) else next(iter(out)))
            if path.exists():
                continue
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n" if path.suffix in (".json", ".yaml") else "x\n")
            else:
                path.mkdir(parents=True)
                (path / "placeholder").write_text("x\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    dvc(root, "config", "core.site_cache_dir", str(root / ".dvc" / "site"))
    dvc(root, "commit", "-f")
    assert json.loads(dvc(root, "status", "--json").stdout) == {}, "every stage recorded as up to date"
    return root


@pytest.mark.parametrize("knob", sorted(CASES))
def test_a_param_makes_exactly_the_stages_that_read_it_stale(committed, knob):
    value, expected = CASES[knob]
    params = committed / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(yaml.safe_dump(_set(yaml.safe_load(original), knob, value), sort_keys=False))
        status = json.loads(dvc(committed, "status", "--json").stdout)
    finally:
        params.write_text(original)
    stale = {name for name, changes in status.items()
             if any("params.yaml" in c.get("changed deps", {}) for c in changes if isinstance(c, dict))}
    assert set(status) == stale == expected, status
