"""DVC stage `export`: trained checkpoint -> TorchScript + ONNX (parity-checked) + MLflow registry.

Reads params `export` (+ `train.output_dir`, `train.mlflow`); writes models/export/ (graphs,
model.json, export.json with parity and latency), models/export/registry.json and
metrics/export.json. A parity failure exits non-zero and exports nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from stargan.stage import run_stage, write_json


def main(cfg, root: Path) -> None:
    from stargan.export import ExportError, export_model
    from stargan.inference import load_model

    e = cfg.export
    ckpt = root / cfg.train.output_dir / "checkpoint.pt"
    out = root / e.output_dir
    try:
        report = export_model(load_model(ckpt), out, parity_atol=e.parity_atol, exporter=e.onnx_exporter,
                              latency_reps=e.latency_reps)
    except ExportError as err:
        print(f"[export] error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    summary = {"parity_max": report["parity_max"]}
    for g, entry in report["graphs"].items():
        summary.update({f"{g}/latency_ms/{k}": v for k, v in entry["latency_ms"].items()})
    print(f"[export] {', '.join(report['graphs'])} -> {out} (max parity diff {report['parity_max']:.2g} "
          f"<= {e.parity_atol:g}); latency ms: " + json.dumps({k: v for k, v in summary.items() if "batch" in k}))
    if e.register:
        from stargan.registry import register

        reg = register(ckpt, cfg, root, export_dir=out, eval_json=root / "metrics" / "eval.json")
        write_json(out / "registry.json", reg.to_dict())
        summary.update({"registered_version": int(reg.version), "alias_moved": int(reg.alias_moved)})
    write_json(root / "metrics" / "export.json", summary)


if __name__ == "__main__":
    sys.exit(run_stage("export", main))
