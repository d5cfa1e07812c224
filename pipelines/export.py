"""DVC stage `export`: trained checkpoint -> TorchScript + ONNX (parity-checked) + MLflow registry.

Reads params `export` (+ `train.output_dir`, `train.mlflow`); writes models/export/ (graphs,
model.json, export.json with parity and latency), models/export/registry.json and
reports/export.json. A parity failure exits non-zero and exports nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from stargan.files import write_json
from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.registry import export_and_register

    e = cfg.export
    report, reg = export_and_register(cfg, root, root / cfg.train.output_dir / "checkpoint.pt", register=e.register)
    summary = {"parity_max": report["parity_max"]}
    for g, entry in report["graphs"].items():
        summary.update({f"{g}/latency_ms/{k}": v for k, v in entry["latency_ms"].items()})
    print(f"[export] {', '.join(report['graphs'])} -> {root / e.output_dir} (max parity diff "
          f"{report['parity_max']:.2g} <= {e.parity_atol:g}); latency ms: "
          + json.dumps({k: v for k, v in summary.items() if "batch" in k}))
    if reg is not None:
        write_json(root / e.output_dir / "registry.json", reg.to_dict())
        summary.update({"registered_version": int(reg.version), "alias_moved": int(reg.alias_moved)})
    write_json(root / "reports" / "export.json", summary)


if __name__ == "__main__":
    sys.exit(run_stage("export", main))
