"""Decode cost per CPU core and bytes per image of shard images, at the training sizes.

Why: a GPU worker's loader must decode ``images/s`` the GPU eats, and its shards must arrive at
``images/s x bytes per image``; both figures depend on format (JPEG or PNG, as the shard stage
writes them: :func:`stargan.data.imageio.encode_image`) and size (128 px v1, 256 px v2). This
measures them on given photos (real ones: ``stargan bench scaling --images <folder>``) or, with
none, on rendered synthetic faces (a stand-in whose bytes and decode times are *not* a real
dataset's; the output says which).

"Per core": one thread's CPU time in this process (OpenCV's threads set to 1), the decoder the
training streams use (:func:`stargan.data.imageio.decode_shard_image`), images already in memory
(no parquet, no augmentation: the whole loader's cost per sample is ``stargan bench data``'s
``cpu_ms_per_image``).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from stargan.errors import StarganError

__all__ = ["DecodeBenchError", "photos_from_folder", "synthetic_photos", "square", "measure_decode", "load_average"]

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


class DecodeBenchError(StarganError, ValueError):
    """No usable photos for the decode benchmark."""


def photos_from_folder(folder: str | Path, n: int) -> list[np.ndarray]:
    """The first ``n`` photos (by name) of ``folder`` as RGB arrays."""
    from stargan.data.imageio import decode_image

    folder = Path(folder)
    if not folder.is_dir():
        raise DecodeBenchError(f"{folder}: not a folder; give --images a folder of .jpg/.png photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)[:n]
    if not files:
        raise DecodeBenchError(f"{folder}: no .jpg/.jpeg/.png files; give --images a folder of photos")
    return [decode_image(p) for p in files]


def synthetic_photos(n: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """``n`` rendered CelebA-like faces (the synthetic dataset's renderer) when no photos are given."""
    from stargan.config import SyntheticConfig
    from stargan.data.imageio import decode_image
    from stargan.data.synthetic.writers import write_celeba_like

    with tempfile.TemporaryDirectory(prefix="stargan-decode-") as tmp:
        root = Path(tmp) / "raw"
        write_celeba_like(root, SyntheticConfig(celeba_images=n, image_size=size, seed=seed))
        return [decode_image(p) for p in sorted((root / "img_celeba").iterdir())]


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop resized to ``size`` (area filter down, cubic up), as a pre-aligned set gets."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = rgb[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if size < side else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interp))


def _rate(blobs: list[bytes], min_seconds: float) -> tuple[float, float]:
    """(decodes per CPU-second of this thread, decodes per wall-clock second) over >= ``min_seconds`` of CPU."""
    from stargan.data.imageio import decode_shard_image

    count, c0, t0 = 0, time.thread_time(), time.perf_counter()
    while True:
        for b in blobs:
            decode_shard_image(b)
        count += len(blobs)
        cpu = time.thread_time() - c0
        if cpu >= min_seconds:
            return count / cpu, count / (time.perf_counter() - t0)


def measure_decode(photos: Sequence[np.ndarray], *, sizes: Sequence[int] = (128, 256),
                   formats: Sequence[str] = ("jpeg", "png"), jpeg_quality: int = 95,
                   min_seconds: float = 1.0, repeats: int = 3) -> list[dict]:
    """One row per (format, size): mean/min/max bytes per image and decodes per second on one core.

    Each photo is cropped and resized (:func:`square`), encoded as the shard stage encodes it, and
    the set is decoded repeatedly for at least ``min_seconds`` of CPU time per repeat (a first pass is
    not timed). The rate is decodes per CPU-second of the decoding thread, median of ``repeats``:
    on a shared machine wall-clock time counts the other processes' turns too (kept beside it as
    ``wall_decodes_per_s``), CPU time counts only this decoder's work.
    """
    from stargan.data.imageio import encode_image

    if not photos:
        raise DecodeBenchError("no photos to measure the decode rate on")
    rows = []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for size in sizes:
            crops = [square(p, size) for p in photos]
            for fmt in formats:
                blobs = [encode_image(c, fmt, jpeg_quality) for c in crops]
                _rate(blobs, 0.0)                         # warm caches and the decoder
                runs = [_rate(blobs, min_seconds) for _ in range(max(1, repeats))]
                rates = sorted(cpu for cpu, _ in runs)
                rate = rates[len(rates) // 2]
                sizes_b = np.asarray([len(b) for b in blobs], dtype=np.float64)
                rows.append({"format": fmt, "image_size": int(size), "images": len(blobs),
                             "jpeg_quality": jpeg_quality if fmt == "jpeg" else None,
                             "bytes_per_image": round(float(sizes_b.mean()), 1),
                             "bytes_min": int(sizes_b.min()), "bytes_max": int(sizes_b.max()),
                             "decodes_per_s_per_core": round(rate, 1), "ms_per_decode": round(1000 / rate, 4),
                             "repeats": len(rates), "cpu_rates": [round(r, 1) for r in rates],
                             "wall_decodes_per_s": [round(w, 1) for _, w in runs]})
    finally:
        cv2.setNumThreads(threads)
    return rows


def load_average() -> float:
    """The 1-minute load average: how busy the machine was (figures from a shared box are a floor)."""
    return round(os.getloadavg()[0], 2)
