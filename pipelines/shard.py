"""DVC stage `shard`: data/aligned/<name>/ -> data/shards/<name>/<split>-NNNNN.parquet + manifest.json.

Reads params `data.root`, `data.datasets` (the names) and `shard`. Every dataset is rewritten
atomically; the counts per split are printed. Bad inputs end with one line and exit status 2.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.data.shards import ShardError, describe, write_shards

    data_root = root / cfg.data.root
    if not cfg.data.datasets:
        raise ShardError("data.datasets is empty: nothing to shard")
    for name in cfg.data.datasets:
        aligned = data_root / "aligned" / name
        if not aligned.is_dir():
            raise ShardError(f"{aligned}: no aligned folder for dataset '{name}'; run `dvc repro align` first")
        t0 = time.perf_counter()
        manifest = write_shards(aligned, data_root / "shards" / name, cfg.shard, name=name)
        n = sum(c["total"] for c in manifest["counts"].values())
        dt = time.perf_counter() - t0
        print(f"[shard] {describe(manifest)} ({n / max(dt, 1e-9):.0f} images/s, {cfg.shard.image_format})")


if __name__ == "__main__":
    sys.exit(run_stage("shard", main))
