"""DVC stage `tune`: Ray Tune sweep over the loss weights -> tuned.yaml, models/tune/best.json,
reports/tune.json.

Reads params `tune` (+ `train`, whose loop each trial runs). The λs searched are the trained
model's loss weights set to `tuned` in params.yaml (e.g. `train.v1.lambda_rec: tuned`); numbers
are used as written. tuned.yaml holds the best value of each searched λ and is a params file of
the train stage, so `dvc exp show` and `dvc params diff` show what trained. No λ set to `tuned`:
no sweep, an empty tuned.yaml.
"""
from __future__ import annotations

import sys
from pathlib import Path

from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.tuning import TuneError, run_sweep, write_outputs

    try:
        best = run_sweep(cfg, root)
    except TuneError as e:
        print(f"[tune] error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    write_outputs(best, root)
    if best["searched"]:
        lam = ", ".join(f"{k}={v:.4g}" for k, v in best["best"].items())
        print(f"[tune] {best['name']}: {len(best['trials'])} trials in {best['seconds']} s; best {lam} "
              f"({best['objective']}={best['best_value']:.4g}) -> tuned.yaml; MLflow parent run "
              f"{best['parent_run_id']}")
    else:
        print(f"[tune] no loss weight of train.{cfg.train.model} is set to 'tuned': no sweep (tuned.yaml is empty)")


if __name__ == "__main__":
    sys.exit(run_stage("tune", main))
