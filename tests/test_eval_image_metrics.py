"""L1 / PSNR / SSIM basics."""
import math

import pytest
import torch

from stargan.evaluation.image_metrics import l1, psnr, ssim


def _img(seed: int, n: int = 3, size: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_identical_images():
    x = _img(0)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    assert torch.all(l1(x, x) == 0)
    assert torch.all(psnr(x, x) == 100.0)


def test_l1_and_psnr_values():
    x = torch.full((1, 3, 8, 8), -1.0)      # black
    y = torch.zeros(1, 3, 8, 8)             # mid grey: 0.5 in [0, 1] units
    assert l1(x, y).item() == pytest.approx(0.5)
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / 0.25))


def test_ssim_drops_with_noise_and_is_symmetric():
    x = _img(1)
    small = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    big = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    assert torch.all(ssim(x, small) > ssim(x, big))
    assert torch.allclose(ssim(x, big), ssim(big, x), atol=1e-6)
    assert torch.all(ssim(x, big) < 0.9)


def test_small_images_shrink_the_window():
    x = _img(4, size=8)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
