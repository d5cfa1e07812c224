"""DVC stage `tune`: Ray Tune sweep over the loss weights -> models/tune/best.json, metrics/tune.json.

Reads params `tune` (+ `train`, whose λs it searches around and whose loop each trial runs).
With tune.enabled false it writes a best.json that applies nothing, so `train` still runs.
The train stage reads best.json and applies its λs (pipelines/train.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

from stargan.stage import run_stage, write_json


def main(cfg, root: Path) -> None:
    from stargan.tuning import TuneError, metrics_summary, run_sweep

    try:
        best = run_sweep(cfg, root)
    except TuneError as e:
        print(f"[tune] error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    write_json(root / "models" / "tune" / "best.json", best)
    write_json(root / "metrics" / "tune.json", metrics_summary(best))
    if best["enabled"]:
        lam = ", ".join(f"{k}={v:.4g}" for k, v in best["best"].items())
        print(f"[tune] {best['name']}: {len(best['trials'])} trials in {best['seconds']} s; best {lam} "
              f"({best['objective']}={best['best_value']:.4g}); MLflow parent run {best['mlflow_parent_run_id']}")
    else:
        print("[tune] tune.enabled is false: no sweep, train uses the λs in params.yaml")


if __name__ == "__main__":
    sys.exit(run_stage("tune", main))
