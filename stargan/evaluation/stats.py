"""Streaming feature statistics and the Fréchet distance between two Gaussians.

:class:`FeatureStats` keeps a running mean and the sum of centred outer products in float64,
merging batch by batch (Chan et al.'s parallel update), so memory is ``O(dim²)`` whatever the
number of images, and the result equals ``np.mean`` / ``np.cov(rowvar=False)`` of all the
features at once (up to float64 rounding). :func:`frechet_distance` follows pytorch-fid's
``calculate_frechet_distance``: ``scipy.linalg.sqrtm`` of the covariance product, an ``eps``
offset on the diagonals when that product is singular, and a refusal when the square root has
a non-negligible imaginary part.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg


class FeatureStats:
    """Running mean and covariance of ``dim``-d features (float64)."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.n = 0
        self.mean = np.zeros(self.dim, np.float64)
        self._m2 = np.zeros((self.dim, self.dim), np.float64)

    def update(self, feats: np.ndarray | torch.Tensor) -> "FeatureStats":
        """Add a batch ``[B, dim]`` of features."""
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().double().numpy()
        x = np.asarray(feats, np.float64).reshape(-1, self.dim)
        nb = x.shape[0]
        if nb == 0:
            return self
        mb = x.mean(axis=0)
        xc = x - mb
        m2b = xc.T @ xc
        n = self.n + nb
        delta = mb - self.mean
        self._m2 += m2b + np.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Fold another accumulator into this one (e.g. from another worker)."""
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self._m2 += other._m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        return self

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (``np.cov`` with ``rowvar=False``); needs at least 2 samples."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 feature vectors, have {self.n}")
        return self._m2 / (self.n - 1)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean.copy(), self.cov


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``||mu1 - mu2||² + Tr(S1 + S2 - 2 sqrt(S1 S2))``, computed as pytorch-fid does."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # sqrtm warns on singular input; we check ourselves
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} "
                             "in sqrt(S1 S2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
