"""Streaming feature statistics and the Fréchet distance (pytorch-fid's formula)."""
import numpy as np
import pytest
import torch
from scipy import linalg

from stargan.evaluation.stats import FeatureStats, fid_from_stats, frechet_distance


def _direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID written out with NumPy/SciPy on the whole feature arrays."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_streaming_stats_equal_full_batch_mean_and_cov():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(257, 12)) @ rng.normal(size=(12, 12))
    st = FeatureStats(12)
    for chunk in (x[:1], x[1:50], torch.from_numpy(x[50:51]), x[51:200], x[200:]):
        st.update(chunk)
    assert st.n == 257
    np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(st.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-9)


def test_merge_equals_one_accumulator():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 5))
    a, b, whole = FeatureStats(5).update(x[:33]), FeatureStats(5).update(x[33:]), FeatureStats(5).update(x)
    a.merge(b)
    np.testing.assert_allclose(a.cov, whole.cov, atol=1e-12)
    np.testing.assert_allclose(a.mean, whole.mean, atol=1e-12)


def test_fid_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(2).normal(size=(400, 16))
    st = FeatureStats(16).update(x)
    assert abs(fid_from_stats(st, st)) < 1e-6


def test_fid_equals_direct_numpy_scipy_computation():
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, size=(300, 20))
    b = rng.normal(0.5, 1.3, size=(250, 20)) @ rng.normal(size=(20, 20)) * 0.3
    sa, sb = FeatureStats(20), FeatureStats(20)
    for i in range(0, 300, 64):
        sa.update(a[i:i + 64])
    for i in range(0, 250, 50):
        sb.update(b[i:i + 50])
    assert fid_from_stats(sa, sb) == pytest.approx(_direct_fid(a, b), rel=1e-7)
    assert fid_from_stats(sa, sb) > 1.0


def test_singular_covariances_give_a_finite_positive_distance():
    # 5 samples in 32 dims: rank-deficient covariances, as with tiny test sets
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(5, 32)) + 1
    sa, sb = FeatureStats(32).update(a), FeatureStats(32).update(b)
    d = fid_from_stats(sa, sb)
    assert np.isfinite(d) and d > 0


def _pytorch_fid(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, written out: sqrtm of S1 S2, an eps offset when it is
    not finite, a refusal when the imaginary part exceeds 1e-3."""
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("imaginary component")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n, dim", [(400, 64), (100, 256), (20, 512)])
def test_fid_equals_pytorch_fids_value_where_it_returns_one(n, dim):
    """Full-rank and fewer-images-than-dimensions statistics (the papers' per-domain FIDs)."""
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) * 0.1
    b = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) * 0.1 + 0.05
    sa, sb = FeatureStats(dim).update(a), FeatureStats(dim).update(b)
    reference = _pytorch_fid(sa.mean, sa.cov, sb.mean, sb.cov)
    assert fid_from_stats(sa, sb) == pytest.approx(reference, rel=1e-6)


def test_fid_with_fewer_images_than_dimensions_never_fails_on_rounding():
    """10 images in 128 dims, features scaled by 100: pytorch-fid's sqrtm of the singular S1 S2
    has a rounding-level imaginary part above its 1e-3 tolerance and raises. The distance is
    real by construction here: FID scales with the square of the features, and the streaming
    accumulation order (chunks) changes nothing beyond rounding."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 128)), rng.normal(size=(10, 128)) + 0.3
    base = fid_from_stats(FeatureStats(128).update(a), FeatureStats(128).update(b))
    scaled = [FeatureStats(128), FeatureStats(128)]
    for lo, hi in ((0, 3), (3, 4), (4, 10)):
        scaled[0].update(100 * a[lo:hi])
        scaled[1].update(100 * b[lo:hi])
    assert fid_from_stats(*scaled) == pytest.approx(1e4 * base, rel=1e-7)
    assert base > 0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="different sizes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
