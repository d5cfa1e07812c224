"""Streaming feature statistics and the Fréchet distance between two Gaussians.

:class:`FeatureStats` keeps a running mean and the sum of centred outer products in float64,
merging batch by batch (Chan et al.'s parallel update), so memory is ``O(dim²)`` whatever the
number of images, and the result equals ``np.mean`` / ``np.cov(rowvar=False)`` of all the
features at once (up to float64 rounding).

:func:`frechet_distance` is pytorch-fid's formula, ``||mu1 - mu2||² + Tr(S1) + Tr(S2) -
2 Tr(sqrt(S1 S2))``, but it does not take ``scipy.linalg.sqrtm`` of the non-symmetric product
``S1 S2``: with fewer images than feature dimensions (every per-domain FID of the papers'
protocols) that product is singular, sqrtm returns a noise-level imaginary part, and pytorch-fid's
``atol=1e-3`` test on it passes or raises depending on chunking and BLAS threads. Here
``Tr(sqrt(S1 S2))`` is the sum of the square roots of the eigenvalues of the symmetric PSD
matrix ``sqrt(S1) S2 sqrt(S1)`` (the same eigenvalues as ``S1 S2``): real by construction, never
failing on rounding, and equal to pytorch-fid's value where it returns one (to ~1e-7 relative,
tests/test_eval_stats.py).
"""
from __future__ import annotations

import numpy as np
import torch


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


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (rounding-level negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr(sqrt(S1 S2))`` for covariance matrices, through ``sqrt(S1) S2 sqrt(S1)`` (symmetric PSD)."""
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||² + Tr(S1 + S2 - 2 sqrt(S1 S2))`` (see the module docstring for the form)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
