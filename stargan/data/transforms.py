"""Image transforms (albumentations) for training and evaluation, seedable per batch.

The official pipelines (torchvision), rebuilt with albumentations:

- ``v1_train`` (yunjey/stargan ``data_loader.py``): horizontal flip (p=0.5) -> resize ->
  normalise to [-1, 1]. The official centre crop (178 px for CelebA) is done by the align stage.
- ``v2_train`` (clovaai/stargan-v2 ``core/data_loader.py``): with probability ``randcrop_prob``
  ``RandomResizedCrop(scale=(0.8, 1), ratio=(0.9, 1.1))`` -> resize -> horizontal flip ->
  normalise.
- ``eval``: resize -> normalise, nothing random.

Determinism: a :class:`BatchTransform` is called with the batch's images and a seed. Before the
batch, the whole ``Compose`` gets ONE fresh ``numpy.random.Generator`` and ``random.Random``
derived from that seed (``Compose.set_random_state``), shared by all its transforms. So the
augmentation of a batch is a pure function of (its images, its seed), independent of which
process or worker computes it, which is what exact resume needs. We do not use
``Compose(seed=...)`` / ``set_random_seed``: albumentations 2.0.8 gives every transform its own
generator seeded with the SAME number, so e.g. the first crop decision and the first flip
decision after seeding draw the same value and are correlated.
"""
from __future__ import annotations

import os
import random
from typing import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

MODES = ("v1_train", "v2_train", "eval")


class BatchTransform:
    """Applies an albumentations pipeline to a list of RGB uint8 images -> float32 [B,3,H,W]."""

    def __init__(self, compose: A.Compose, mode: str, image_size: int):
        self.compose = compose
        self.mode = mode
        self.image_size = image_size

    def __call__(self, images: Sequence[np.ndarray], seed: int | Sequence[int] = 0) -> torch.Tensor:
        ss = np.random.SeedSequence(seed)
        py_seed = int(ss.generate_state(2, dtype=np.uint64)[0])
        self.compose.set_random_state(np.random.default_rng(ss), random.Random(py_seed))
        if not images:
            return torch.empty(0, 3, self.image_size, self.image_size)
        return torch.stack([self.compose(image=img)["image"] for img in images])


def _interpolation(source_size: int | None, image_size: int) -> int:
    # INTER_AREA when shrinking (no aliasing), bilinear when enlarging (as torchvision's Resize).
    return cv2.INTER_AREA if source_size is not None and image_size < source_size else cv2.INTER_LINEAR


def build_transform(mode: str, image_size: int, source_size: int | None = None,
                    randcrop_prob: float = 0.5) -> BatchTransform:
    """The transform for ``mode`` in ``MODES``, to ``image_size`` square, from ``source_size``
    square inputs (the shards' ``image_size``; picks the resize interpolation)."""
    if mode not in MODES:
        raise ValueError(f"transform mode {mode!r}: expected one of {', '.join(MODES)}")
    interp = _interpolation(source_size, image_size)
    resize = A.Resize(image_size, image_size, interpolation=interp)
    tail = [A.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), max_pixel_value=255.0), ToTensorV2()]
    if mode == "v1_train":
        steps = [A.HorizontalFlip(p=0.5), resize]
    elif mode == "v2_train":
        crop = A.RandomResizedCrop(size=(image_size, image_size), scale=(0.8, 1.0), ratio=(0.9, 1.1),
                                   interpolation=interp, p=randcrop_prob)
        steps = [crop, resize, A.HorizontalFlip(p=0.5)]
    else:
        steps = [resize]
    return BatchTransform(A.Compose(steps + tail), mode, image_size)
