"""DVC stage `train`: shards -> trained checkpoint, on Ray Train, tracked in MLflow.

Reads params `train` and tuned.yaml (the sweep's best value for each loss weight set to `tuned`;
a number in params.yaml trains as written); writes train.output_dir/checkpoint.pt,
reports/train.json (the last logged losses and rates) and plots/train_loss.csv. With train.ray.address (or RAY_ADDRESS) set, the
training runs on that Ray cluster and this stage waits for it.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from stargan.files import write_json
from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.training.ray_train import fit

    out = fit(cfg, root)
    rows = [json.loads(ln) for ln in out.history.read_text().splitlines() if ln.strip()] if out.history.exists() else []
    keys = sorted({k for r in rows for k in r if k != "step"})
    plot = root / "plots" / "train_loss.csv"
    plot.parent.mkdir(parents=True, exist_ok=True)
    with plot.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *keys])
        for r in rows:
            w.writerow([r["step"], *[r.get(k, "") for k in keys]])
    final = {k: v for k, v in out.metrics.items() if isinstance(v, (int, float))}
    write_json(root / "reports" / "train.json", {"model": cfg.train.model, **final})
    print(f"[train] {out.run_name}: checkpoint {out.checkpoint}, MLflow run {out.run_id} at {out.tracking_uri}")


if __name__ == "__main__":
    sys.exit(run_stage("train", main))
