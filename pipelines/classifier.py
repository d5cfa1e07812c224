"""DVC stage `classifier`: real training shards -> one attribute/expression classifier per dataset.

Reads params `evaluate.classifier_*`, `train.image_size`, `train.datasets`, `train.seed`; writes
models/classifier/<dataset>.pt and reports/classifier.json (accuracy on the real test images).
The evaluate stage uses these classifiers for the target-accuracy metric (StarGAN's protocol).
"""
from __future__ import annotations

import sys
from pathlib import Path

from stargan.files import write_json
from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.evaluation.classifier import train_classifiers

    metrics = train_classifiers(cfg, root)
    write_json(root / "reports" / "classifier.json", metrics)
    for ds, m in metrics.items():
        print(f"[classifier] {ds}: real test accuracy {m['accuracy']:.4f} on {m['images']} images "
              f"({m['params']} parameters, {m['train_seconds']}s)")


if __name__ == "__main__":
    sys.exit(run_stage("classifier", main))
