"""DVC stage `evaluate`: trained checkpoint + test shards (+ classifiers) -> the papers' metrics.

Reads params `evaluate` (+ `data`, `synthetic.image_size`, `train.output_dir`, `train.mlflow`);
writes metrics/headline.json (the few numbers DVC compares), reports/eval.json (every number, with
an `unavailable` entry and its fix for every metric that could not run), plots/eval/*.csv and
plots/eval_grids/*.png (DVC plots), and logs all of it to the MLflow run of the evaluated model.
"""
from __future__ import annotations

import sys
from pathlib import Path

from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.config import EVAL_REPORT, HEADLINE
    from stargan.evaluation.evaluate import evaluate_checkpoint
    from stargan.evaluation.report import headline

    report = evaluate_checkpoint(cfg, root)
    print(f"[evaluate] wrote {root / EVAL_REPORT} and {root / HEADLINE}: "
          + ", ".join(f"{k} {v:g}" for k, v in headline(report).items()))
    unmeasured = [k for k in report.get("judge", {}).get("not_meaningful", []) if not k.endswith("mean")]
    if unmeasured:
        print(f"[evaluate] the judge cannot measure {', '.join(unmeasured)} (judge_ok false: its scores on real "
              f"or true images of the label are below evaluate.judge_min_accuracy; reports/eval.json 'judge')")


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main))
