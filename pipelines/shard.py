"""DVC stage `shard`: data/aligned/<name>/ -> data/shards/<name>/<split>-NNNNN.parquet + manifest.json.

Reads params `data.root`, `data.datasets` (the names) and `shard`. Every dataset is rewritten
atomically; the counts per split are printed. With `shard.uri` set (s3://, gs://, file://), each
dataset is then published to `<shard.uri>/<name>/` for training workers on other nodes
(stargan/data/remote_shards.py); data/shards stays the DVC-tracked copy. Bad inputs end with one
line and exit status 2.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    from stargan.data.remote_shards import publish_shards
    from stargan.data.shards import ShardError, describe, write_shards
    from stargan.storage import join

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
        if cfg.shard.uri:
            t0, uri = time.perf_counter(), str(join(cfg.shard.uri, name))
            published = publish_shards(data_root / "shards" / name, uri, root)
            size = sum(f["remote"]["size"] for f in published["files"])
            print(f"[shard] published {len(published['files'])} file(s), {size / 2**20:.1f} MiB to {uri} "
                  f"in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(run_stage("shard", main))
