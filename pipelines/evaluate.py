"""DVC stage `evaluate`: trained checkpoint + test shards (+ classifiers) -> the papers' metrics.

Reads params `evaluate` (+ `data`, `synthetic.image_size`, `train.output_dir`, `train.mlflow`);
writes metrics/eval.json (DVC metrics, with an `unavailable` entry and its fix for every metric
that could not run), plots/eval_*.csv and plots/eval_grids/*.png (DVC plots), and logs all of it
to the MLflow run of the evaluated model.
"""
from __future__ import annotations

import sys
from pathlib import Path

from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.evaluation.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(cfg, root)
    for name, why in report["unavailable"].items():
        print(f"[evaluate] {name} unavailable: {why['reason']}. Fix: {why['fix']}")
    print(f"[evaluate] wrote {root / 'metrics' / 'eval.json'}")


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main))
