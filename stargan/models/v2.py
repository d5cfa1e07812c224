"""StarGAN v2 networks (Choi et al., CVPR 2020): generator G(x, s), mapping network F_y(z),
style encoder E_y(x) and multi-task discriminator D_y(x): plain ``nn.Module``s (what trains them,
with which optimizers, is built in :mod:`stargan.training.nets`).

Written from the paper and the facts listed in the project's reference notes (section B), not
from the official code (which is CC BY-NC). Sizes follow the official networks exactly, so the
parameter counts at 256 px match theirs (see ``tests/test_models_v2.py``) and their released
EMA checkpoints map onto these modules name for name (``hpf.filter`` aside, see HighPass).

Two deliberate differences, both no-ops for every official configuration:
- The first conv width ``2**14 // img_size`` is capped at ``max_conv_dim`` (at 256 px it is 64
  either way); without the cap small images would start *wider* than the cap (512 ch at 32 px).
- Image sizes must be powers of two >= 16 (E/D end on a 4x4 map before their 4x4 conv).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stargan.models.ops import InstanceNorm, avg_pool2x, instance_norm

__all__ = ["ResBlk", "AdaIN", "AdainResBlk", "HighPass", "Generator", "MappingNetwork", "StyleEncoder",
           "Discriminator", "he_init"]

_SQRT2 = math.sqrt(2.0)


def _log2_size(img_size: int) -> int:
    n = int(round(math.log2(img_size))) if img_size > 0 else 0
    if img_size < 16 or 2 ** n != img_size:
        raise ValueError(f"StarGAN v2 needs a power-of-two image size >= 16, got {img_size}")
    return n


def _first_dim(img_size: int, max_conv_dim: int) -> int:
    return min(2 ** 14 // img_size, max_conv_dim)


# ------------------------------------------------------------------------------- blocks

class ResBlk(nn.Module):
    """Pre-activation residual block: [IN] act conv3 [pool] [IN] act conv3, plus a shortcut
    (1x1 conv without bias when the width changes, then pool); the sum is divided by sqrt(2).
    ``fast`` (``train.fast_ops``) pools with :func:`~stargan.models.ops.avg_pool2x`."""

    fast: bool = False

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False, downsample: bool = False):
        super().__init__()
        self.normalize, self.downsample = normalize, downsample
        self.learned_sc = dim_in != dim_out
        self.actv = nn.LeakyReLU(0.2)
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = InstanceNorm(dim_in, affine=True)
            self.norm2 = InstanceNorm(dim_in, affine=True)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.learned_sc:
            x = self.conv1x1(x)
        return self._pool(x) if self.downsample else x

    def _pool(self, x: Tensor) -> Tensor:
        return avg_pool2x(x) if self.fast else F.avg_pool2d(x, 2)

    def _residual(self, x: Tensor) -> Tensor:
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(self.actv(x))
        if self.downsample:
            x = self._pool(x)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(self.actv(x))

    def forward(self, x: Tensor) -> Tensor:
        return (self._shortcut(x) + self._residual(x)) / _SQRT2


class AdaIN(nn.Module):
    """Adaptive instance norm: ``(1 + γ) · IN(x) + β`` with (γ, β) = Linear(style_dim, 2C)(s).
    ``fast`` folds γ, β into one normalising pass (:func:`~stargan.models.ops.instance_norm`)."""

    fast: bool = False

    def __init__(self, style_dim: int, num_features: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        if self.fast:
            return instance_norm(x, None, None, self.norm.eps, gamma=gamma, beta=beta)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """Decoder block: AdaIN act [up x2 nearest] conv3 AdaIN act conv3. With ``w_hpf == 0`` the
    output is (residual + shortcut)/sqrt(2); with ``w_hpf > 0`` the shortcut is dropped (the
    high-pass mask skips carry the source detail instead). The 1x1 shortcut conv still exists
    when the width changes, unused when ``w_hpf > 0``, exactly as in the official networks (so
    parameter counts and checkpoint keys match); it then never receives a gradient."""

    def __init__(self, dim_in: int, dim_out: int, style_dim: int = 64, w_hpf: float = 0.0,
                 upsample: bool = False):
        super().__init__()
        self.w_hpf, self.upsample = w_hpf, upsample
        self.learned_sc = dim_in != dim_out
        self.actv = nn.LeakyReLU(0.2)
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv1x1(x) if self.learned_sc else x

    def _residual(self, x: Tensor, s: Tensor) -> Tensor:
        x = self.actv(self.norm1(x, s))
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv1(x)
        x = self.actv(self.norm2(x, s))
        return self.conv2(x)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        out = self._residual(x, s)
        if self.w_hpf == 0:
            out = (out + self._shortcut(x)) / _SQRT2
        return out


class HighPass(nn.Module):
    """Depthwise 3x3 Laplacian divided by ``w_hpf``. The kernel is a *non-persistent* buffer:
    it follows ``.to(device)`` but is not saved, because it is a function of ``w_hpf`` (config)
    and the released official checkpoint has no ``hpf.filter`` key (their issues #103/#104)."""

    def __init__(self, w_hpf: float):
        super().__init__()
        if w_hpf <= 0:
            raise ValueError(f"HighPass needs w_hpf > 0, got {w_hpf}")
        kernel = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]]) / w_hpf
        self.register_buffer("filter", kernel, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c = int(x.size(1))      # static: a traced size would leave the kernel shape unknown to ONNX
        weight = self.filter.to(x.dtype)[None, None].expand(c, 1, 3, 3)
        return F.conv2d(x, weight, padding=1, groups=c)


# ----------------------------------------------------------------------------- networks

_MASK_SIZES = (32, 64, 128)


class Generator(nn.Module):
    """G(x, s[, masks]) -> image (no tanh, as the paper). Encoder: ``log2(img)-4`` (+1 if
    ``w_hpf > 0``) downsampling ResBlks, then 2 bottleneck ResBlks; the decoder mirrors it with
    AdainResBlks. ``masks`` = (coarse, fine) FAN heatmaps, only with ``w_hpf > 0``: after each
    decoder block whose output is 32/64/128 px, ``x += hpf(mask · encoder input cached at that
    size)``, coarse mask at 32 px, fine mask at 64 and 128 px."""

    def __init__(self, img_size: int = 256, style_dim: int = 64, max_conv_dim: int = 512,
                 w_hpf: float = 1.0):
        super().__init__()
        n = _log2_size(img_size)
        dim_in = _first_dim(img_size, max_conv_dim)
        self.img_size, self.w_hpf = img_size, w_hpf
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.to_rgb = nn.Sequential(InstanceNorm(dim_in, affine=True), nn.LeakyReLU(0.2),
                                    nn.Conv2d(dim_in, 3, 1, 1, 0))
        encode, decode = [], []
        dim_out = dim_in
        for _ in range(n - 4 + (1 if w_hpf > 0 else 0)):
            dim_out = min(dim_in * 2, max_conv_dim)
            encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True))
            decode.insert(0, AdainResBlk(dim_out, dim_in, style_dim, w_hpf=w_hpf, upsample=True))
            dim_in = dim_out
        for _ in range(2):
            encode.append(ResBlk(dim_out, dim_out, normalize=True))
            decode.insert(0, AdainResBlk(dim_out, dim_out, style_dim, w_hpf=w_hpf))
        self.encode = nn.ModuleList(encode)
        self.decode = nn.ModuleList(decode)
        if w_hpf > 0:
            self.hpf = HighPass(w_hpf)

    def forward(self, x: Tensor, s: Tensor, masks: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if masks is not None and self.w_hpf <= 0:
            raise ValueError("masks are only used by a generator built with w_hpf > 0")
        x = self.from_rgb(x)
        cache: dict[int, Tensor] = {}
        # int(): sizes are static per image size; under tracing (export) size() is a tensor,
        # which would not find its dict key.
        for block in self.encode:
            if masks is not None and int(x.size(2)) in _MASK_SIZES:
                cache[int(x.size(2))] = x
            x = block(x)
        for block in self.decode:
            x = block(x, s)
            size = int(x.size(2))
            if masks is not None and size in _MASK_SIZES:
                mask = masks[0] if size == 32 else masks[1]
                mask = F.interpolate(mask.to(x.dtype), size=(size, size), mode="bilinear",
                                     align_corners=False)
                x = x + self.hpf(mask * cache[size])
        return self.to_rgb(x)


def _select(out: Tensor, y: Tensor) -> Tensor:
    """out[b, y[b], ...] for a per-domain stack ``out`` [B, K, ...]."""
    return out[torch.arange(out.size(0), device=out.device), y]


class MappingNetwork(nn.Module):
    """F_y(z) -> s: 4 shared Linear+ReLU layers, then per domain 3 Linear+ReLU and Linear to
    ``style_dim``. The official code hard-codes ``hidden_dim=512`` (its flag is unused); here
    it is a real argument."""

    def __init__(self, latent_dim: int = 16, style_dim: int = 64, num_domains: int = 2,
                 hidden_dim: int = 512):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden_dim), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        self.shared = nn.Sequential(*layers)
        self.unshared = nn.ModuleList()
        for _ in range(num_domains):
            head: list[nn.Module] = []
            for _ in range(3):
                head += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
            head.append(nn.Linear(hidden_dim, style_dim))
            self.unshared.append(nn.Sequential(*head))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.shared(z)
        return _select(torch.stack([head(h) for head in self.unshared], dim=1), y)


def _trunk(img_size: int, max_conv_dim: int) -> tuple[list[nn.Module], int]:
    """Shared E/D body: conv3, ``log2(img)-2`` downsampling ResBlks (to 4x4), act, conv4 (to 1x1), act."""
    n = _log2_size(img_size)
    dim_in = _first_dim(img_size, max_conv_dim)
    blocks: list[nn.Module] = [nn.Conv2d(3, dim_in, 3, 1, 1)]
    dim_out = dim_in
    for _ in range(n - 2):
        dim_out = min(dim_in * 2, max_conv_dim)
        blocks.append(ResBlk(dim_in, dim_out, downsample=True))
        dim_in = dim_out
    blocks += [nn.LeakyReLU(0.2), nn.Conv2d(dim_out, dim_out, 4, 1, 0), nn.LeakyReLU(0.2)]
    return blocks, dim_out


class StyleEncoder(nn.Module):
    """E_y(x) -> s: the E/D trunk, then one Linear(C, style_dim) head per domain, picked by y."""

    def __init__(self, img_size: int = 256, style_dim: int = 64, num_domains: int = 2,
                 max_conv_dim: int = 512):
        super().__init__()
        blocks, dim_out = _trunk(img_size, max_conv_dim)
        self.shared = nn.Sequential(*blocks)
        self.unshared = nn.ModuleList(nn.Linear(dim_out, style_dim) for _ in range(num_domains))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.shared(x).flatten(1)
        return _select(torch.stack([head(h) for head in self.unshared], dim=1), y)


class Discriminator(nn.Module):
    """Multi-task D_y(x) -> one real/fake logit [B] per image, read from the head of domain y."""

    def __init__(self, img_size: int = 256, num_domains: int = 2, max_conv_dim: int = 512):
        super().__init__()
        blocks, dim_out = _trunk(img_size, max_conv_dim)
        blocks.append(nn.Conv2d(dim_out, num_domains, 1, 1, 0))
        self.main = nn.Sequential(*blocks)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return _select(self.main(x).flatten(1), y)


def he_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_in, relu) weights and zero biases for every Conv2d and Linear."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
