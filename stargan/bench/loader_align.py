"""Load benchmark (not a test): images/s of the training loader at 1, 2 and 4 DataLoader workers
and of the align stage at 1 and 2 processes, as JSON (``stargan bench load``).

- ``align``: :func:`stargan.data.align.bench_align` on a generated CelebA-like raw set (in-the-wild
  canvases with 5 landmarks: the landmark similarity warp, the path real CelebA/FFHQ-style data
  takes), ``align.image_size`` output, at each process count.
- ``loader``: :class:`stargan.data.loader.TrainStream` (parquet read + PNG decode + the v1 train
  transform) through a ``DataLoader`` at each worker count, ``train.batch_size`` x
  ``train.image_size``, steady state after the first batch; 0 workers (in the training process) is
  measured too as the reference.

These per-worker figures are what docs/scaling.md compares with a GPU's appetite: one training
process needs ``images_per_step / step_time`` images/s from its loader workers.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Sequence

from stargan.config import Config, DatasetSpec, SyntheticConfig


def bench_load(cfg: Config, out_path: Path, *, images: int = 512, batches: int = 30,
               loader_workers: Sequence[int] = (0, 1, 2, 4), align_workers: Sequence[int] = (1, 2)) -> dict:
    from stargan.bench.data import _bench_loader, machine_info, write_aligned_set
    from stargan.data.align import bench_align
    from stargan.data.formats import read_dataset
    from stargan.data.shards import write_shards
    from stargan.data.synthetic import write_celeba_like
    from stargan.files import write_json

    import os

    t = cfg.train
    # The load average says how busy the machine was: numbers from a shared box are a floor.
    result: dict = {"machine": machine_info() | {"loadavg_1m_before": round(os.getloadavg()[0], 2)}, "settings": {
        "images": images, "align_image_size": cfg.align.image_size, "batch_size": t.batch_size,
        "train_image_size": t.image_size, "timed_batches": batches, "image_format": cfg.shard.image_format}}
    with tempfile.TemporaryDirectory(prefix="stargan-bench-load-") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        write_celeba_like(raw, SyntheticConfig(celeba_images=images, image_size=cfg.synthetic.image_size))
        index = read_dataset(raw, "celeba", ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"], "celeba")
        t0 = time.perf_counter()
        result["align"] = bench_align(index, cfg.align, DatasetSpec(), workers=tuple(align_workers), scratch=tmp)
        result["align"]["raw_canvas"] = cfg.synthetic.image_size
        aligned = write_aligned_set(tmp / "aligned", n=images, image_size=cfg.align.image_size)
        write_shards(aligned, tmp / "shards", cfg.shard, name="bench")
        result["loader"] = [_bench_loader(tmp / "shards", t.batch_size, t.image_size, w, batches)
                            for w in loader_workers]
        result["seconds"] = round(time.perf_counter() - t0, 1)
    result["summary"] = {
        "align_images_per_s": {str(r["workers"]): r["images_per_s"] for r in result["align"]["runs"]},
        "loader_images_per_s": {str(r["workers"]): r["images_per_s"] for r in result["loader"]},
        "cpus_usable": result["machine"]["cpus_usable"]}
    write_json(out_path, result)
    return result
