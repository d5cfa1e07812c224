"""Per-image L1, PSNR and SSIM between two batches of images in [-1, 1].

All three are computed on pixels mapped to [0, 1] (data range 1), per image, so callers can
average per target domain. SSIM is Wang et al. (2004): an 11x11 Gaussian window with
sigma 1.5 (shrunk to the image side for images under 11 px), C1 = (0.01)², C2 = (0.03)²,
"valid" filtering, averaged over the map and the RGB channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PSNR_CAP_DB = 100.0     # identical images: MSE 0 would give +inf


def _unit(x: Tensor) -> Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute error per image, pixels in [0, 1] -> [B]."""
    return (_unit(a) - _unit(b)).abs().flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image (data range 1), capped at ``PSNR_CAP_DB`` -> [B]."""
    mse = (_unit(a) - _unit(b)).pow(2).flatten(1).mean(1)
    floor = 10 ** (-PSNR_CAP_DB / 10)
    return 10 * torch.log10(1.0 / mse.clamp_min(floor))


def _gaussian(size: int, sigma: float, device, dtype) -> Tensor:
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM per image -> [B]."""
    x, y = _unit(a).double(), _unit(b).double()
    c = x.size(1)
    size = min(window, x.size(-1), x.size(-2))
    g = _gaussian(size, sigma, x.device, x.dtype)
    gh = g.view(1, 1, 1, size).repeat(c, 1, 1, 1)
    gv = g.view(1, 1, size, 1).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


def all_metrics(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """``{"l1", "psnr", "ssim"}`` per image."""
    return {"l1": l1(pred, target), "psnr": psnr(pred, target), "ssim": ssim(pred, target)}


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan
