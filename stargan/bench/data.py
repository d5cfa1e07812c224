"""Data throughput benchmark: shard writing and the training loader (images/s), as JSON.

``stargan bench data`` calls :func:`bench_data`. It measures, per dataset:

- ``shard_write``: :func:`stargan.data.shards.write_shards` from ``data/aligned/<name>`` into a
  temp folder (the real ``data/shards`` is not touched);
- ``loader``: the training stream of ``train.model`` through a ``DataLoader`` at each worker count,
  steady state after the first batch, plus the start-up time (first batch), uint8 batches as
  training gets them (:func:`stargan.data.loader.train_stream`). v1:
  :class:`stargan.data.loader.TrainStream` (read + decode + v1 train transform); v2:
  :class:`stargan.data.loader.BalancedStream` over ``train.v2.domains`` (three decodes per sample:
  source, reference, second reference; ``images_per_s`` counts samples, as training throughput
  does). The 0-worker row runs in this process, so ``1000 / images_per_s`` there is the CPU time
  one sample costs (``cpu_ms_per_image``): a training process needing R images/s needs about
  ``R * cpu_ms_per_image / 1000`` loader cores;
- ``decode_only``: parquet read + image decode (the loaders' :func:`decode_shard_image`) in this
  process, no transform.

With no aligned folder present, a generated aligned set (:func:`write_aligned_set`) stands in.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from stargan.config import Config, ShardConfig


def write_aligned_set(out_dir: Path, *, n: int, image_size: int = 64, name: str = "generated",
                      label_names: Sequence[str] = ("A", "B", "C"), label_kind: str = "multi",
                      split: str | None = "train", identities: int = 0, seed: int = 0,
                      label_probs: Sequence[float] | None = None) -> Path:
    """Write a small aligned folder in the align stage's format (contracts.md, stage 2).

    Images are smooth random colour fields (PNG). ``split=None`` leaves the split empty ("") for
    the shard stage to assign; ``identities > 0`` gives image ``i`` identity ``i % identities``.
    ``onehot`` labels pick class ``i % L`` unless ``label_probs`` weights the classes; ``multi``
    labels are independent coin flips. Used by the benchmark and by tests.
    """
    import cv2

    from stargan.data.imageio import encode_png

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    L = len(label_names)
    rows = []
    for i in range(n):
        key = f"img_{i:06d}.png"
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        rgb = cv2.resize(small, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
        (out_dir / "images" / key).write_bytes(encode_png(rgb))
        if label_kind == "onehot":
            c = int(rng.choice(L, p=label_probs)) if label_probs is not None else i % L
            labels = [int(j == c) for j in range(L)]
        else:
            labels = [int(v) for v in rng.integers(0, 2, size=L)]
        rows.append({"key": key, "file": f"images/{key}", "labels": labels,
                     "split": split or "", "identity": (i % identities) if identities else -1,
                     "matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "method": "centre_crop", "extra": {}})
    (out_dir / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["key"])))
    (out_dir / "meta.json").write_text(json.dumps({
        "name": name, "layout": "folders", "label_names": list(label_names), "label_kind": label_kind,
        "image_size": image_size, "counts": {"accepted": n}}, indent=2))
    return out_dir


def machine_info() -> dict:
    import albumentations
    import cv2
    import pyarrow
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "pyarrow": pyarrow.__version__, "numpy": np.__version__,
            "albumentations": albumentations.__version__, "opencv": cv2.__version__,
            "torch_threads": torch.get_num_threads()}


def _bench_loader(shard_dir: Path, batch_size: int, image_size: int, workers: int, batches: int,
                  v2_domains: Sequence[str] | None = None) -> dict:
    from stargan.data.loader import BalancedStream, TrainStream, make_loader

    if v2_domains is None:
        stream = TrainStream(shard_dir, batch_size=batch_size, image_size=image_size, seed=0, uint8=True)
    else:
        stream = BalancedStream(shard_dir, domains=v2_domains, batch_size=batch_size, image_size=image_size, seed=0,
                                uint8=True)
    t0 = time.perf_counter()
    it = iter(make_loader(stream, num_workers=workers))
    next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    t2 = time.perf_counter()
    del it
    rate = batches * batch_size / (t2 - t1)
    row = {"stream": "v1 TrainStream" if v2_domains is None else "v2 BalancedStream", "workers": workers,
           "batch_size": batch_size, "image_size": image_size, "batches": batches,
           "startup_s": round(t1 - t0, 3), "images_per_s": round(rate, 1)}
    if workers == 0:
        row["cpu_ms_per_image"] = round(1000 / rate, 3)
    return row


def _bench_decode(shard_dir: Path, limit: int) -> dict:
    import pyarrow.parquet as pq

    from stargan.data.imageio import decode_shard_image
    from stargan.data.shards import verify_shards

    manifest = verify_shards(shard_dir)
    n, t0 = 0, time.perf_counter()
    for entry in manifest["files"]:
        for rb in pq.ParquetFile(shard_dir / entry["path"]).iter_batches(batch_size=256, columns=["image"]):
            for b in rb.column("image").to_pylist():
                decode_shard_image(b)
                n += 1
            if n >= limit:
                break
        if n >= limit:
            break
    return {"images": n, "images_per_s": round(n / (time.perf_counter() - t0), 1)}


def bench_data(cfg: Config, out_path: Path, *, repo_root: Path = Path("."), datasets: Sequence[str] | None = None,
               workers: Sequence[int] = (0, 1, 2), batches: int = 40, generated_images: int = 1024) -> dict:
    """Measure shard write and loader throughput; write the result JSON to ``out_path``.

    Args:
        cfg: the loaded config (``data``, ``shard``, ``train.batch_size``/``image_size`` are used).
        out_path: where the JSON goes (parents created).
        repo_root: folder that ``data.root`` is relative to.
        datasets: names to measure (default: every ``data.datasets`` key with an aligned folder).
        workers: ``DataLoader`` worker counts to measure the loader at.
        batches: batches timed per worker count (after the first, which counts as start-up).
        generated_images: size of the generated aligned set used when no aligned folder exists.
    Returns:
        the JSON content: ``{"machine", "shard_config", "datasets": {name: {...}}}``.
    """
    from stargan.data.shards import write_shards
    from stargan.files import write_json

    data_root = Path(repo_root) / cfg.data.root
    names = list(datasets) if datasets is not None else list(cfg.data.datasets)
    result: dict = {"machine": machine_info(), "shard_config": vars(cfg.shard).copy(), "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="stargan-bench-") as tmp:
        sources = {n: data_root / "aligned" / n for n in names if (data_root / "aligned" / n).is_dir()}
        if not sources:
            sources = {"generated": write_aligned_set(Path(tmp) / "aligned", n=generated_images,
                                                      image_size=cfg.align.image_size)}
        for name, aligned in sources.items():
            entry: dict = {"aligned": str(aligned)}
            out = Path(tmp) / "shards" / name
            for fmt in ("png", "jpeg"):
                scfg = ShardConfig(**{**vars(cfg.shard), "image_format": fmt})
                t0 = time.perf_counter()
                manifest = write_shards(aligned, out if fmt == cfg.shard.image_format else Path(tmp) / f"x-{fmt}",
                                        scfg, name=name)
                dt = time.perf_counter() - t0
                n = sum(c["total"] for c in manifest["counts"].values())
                entry[f"shard_write_{fmt}"] = {"images": n, "seconds": round(dt, 3),
                                               "images_per_s": round(n / dt, 1)}
            existing = data_root / "shards" / name
            shard_dir = existing if (existing / "manifest.json").exists() else out
            entry["shards"] = str(shard_dir)
            entry["decode_only"] = _bench_decode(shard_dir, limit=batches * cfg.train.batch_size)
            v2_domains = list(cfg.train.v2.domains) if cfg.train.model == "v2" else None
            entry["loader"] = [_bench_loader(shard_dir, cfg.train.batch_size, cfg.train.image_size, w, batches,
                                             v2_domains) for w in workers]
            result["datasets"][name] = entry
    write_json(out_path, result)
    return result
