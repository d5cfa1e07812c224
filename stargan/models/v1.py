"""StarGAN (v1) networks: the conditional generator G(x, c) and the two-headed PatchGAN critic D.

Layer for layer the networks of Choi et al., CVPR 2018 (official ``model.py``), so parameter
counts match the released models: G 8,430,528 / D 44,762,048 at 128 px with five CelebA
attributes. Plain ``nn.Module`` s: no device, precision or framework code in here; they run
unchanged in channels_last memory format and under bf16 autocast. (Measured on one H100 at
128 px, batch 16, see benchmarks/README.md: the iteration is host-bound there; bf16 and
channels_last alone do not shorten it, compiling G does, 18.9 -> 16.6 ms.)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stargan.models.ops import InstanceNorm


def _instance_norm(channels: int) -> InstanceNorm:
    """Instance norm with a learned scale/shift and *no* running statistics.

    The official code builds its norms with ``track_running_stats=True`` (kept for loading
    PyTorch 0.3 checkpoints) but never calls ``.eval()``, so both training and its test-time
    translation normalise every image by its own statistics; the running buffers are written
    and never read. Without them the module computes exactly that in both ``train()`` and
    ``eval()`` mode, so an exported or ``eval()``-ed model cannot silently switch to stale
    dataset averages (yunjey/stargan#140). With ``train.fast_ops`` the same maths runs as
    :func:`stargan.models.ops.instance_norm`, which keeps channels_last activations in place.
    """
    return InstanceNorm(channels, affine=True, track_running_stats=False)


class LabelNorm(nn.Module):
    """Instance norm whose scale and shift also depend on the target label c:
    ``IN(x) * (1 + scale(c)) + shift(c)`` (conditional instance norm, Dumoulin et al., ICLR 2017;
    StarGAN v2's AdaIN does the same with a style code). ``scale`` and ``shift`` start at zero, so
    an untrained LabelNorm is the plain affine IN it wraps.

    Why: in the paper's G the label enters only as constant input channels, and every instance
    norm subtracts what is constant over the image, so the label reaches G's interior only through
    the zero-padded border; here it reaches every norm directly.
    """

    def __init__(self, channels: int, c_dim: int) -> None:
        super().__init__()
        self.norm = _instance_norm(channels)
        self.scale = nn.Linear(c_dim, channels, bias=False)
        self.shift = nn.Linear(c_dim, channels, bias=False)
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.norm(x) * (1 + self.scale(c)[:, :, None, None]) + self.shift(c)[:, :, None, None]


def _norm(channels: int, c_dim: int | None) -> nn.Module:
    return LabelNorm(channels, c_dim) if c_dim else _instance_norm(channels)


def _run(layers: nn.Sequential, h: Tensor, c: Tensor) -> Tensor:
    """``layers(h)``, handing the label to the layers that take one."""
    for layer in layers:
        h = layer(h, c) if isinstance(layer, (LabelNorm, ResidualBlock)) else layer(h)
    return h


class ResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))), no activation after the sum (``label_dim``: LabelNorms)."""

    def __init__(self, channels: int, label_dim: int | None = None) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), _norm(channels, label_dim), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), _norm(channels, label_dim),
        )

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return x + _run(self.main, x, c)


class Generator(nn.Module):
    """G(x, c): image [B,3,H,W] in [-1,1] and target label [B,c_dim] -> translated image in [-1,1].

    The label is tiled over the image and concatenated as ``c_dim`` extra input channels;
    then 7x7 conv, two stride-2 down convs, ``repeat_num`` residual blocks, two stride-2
    transposed convs, 7x7 conv and tanh. ``edge_kernel`` (``train.v1.g_edge_kernel``) sizes those
    two 7x7 convs: at 32 px on a CPU they are a quarter of a training step; 3x3 makes the step a
    fifth faster and, measured on the default, is no better or worse overall than a seed, but
    weaker on Male (README "Baseline figures"). Convs carry no bias (each is followed by an affine
    instance norm, which would cancel it). Zero padding is deliberate: the official code notes
    that tiled-label conditioning fails with reflection padding, because instance norm removes
    a constant shift and only the zero border lets the label channels through.

    ``residual=True`` (not the paper; ``train.v1.residual``) makes G predict the *change*:
    ``clamp(x + residual_scale * tanh(...), -1, 1)`` with the last conv zero-initialised, so an
    untrained G is the identity and training only has to learn what a target alters (residual
    images, Shen & Liu, CVPR 2017). A small G on a short budget otherwise spends its updates
    re-learning to draw the whole face and blurs what it should keep (README "Baseline figures").
    The change must span the whole range (``residual_scale`` 2): at 1 a blond pixel (0.8) cannot
    get below -0.2, so blond -> black hair is out of reach and such translations end up brown.

    ``label_norm=True`` (not the paper; ``train.v1.label_norm``) makes every norm a
    :class:`LabelNorm`, so the label reaches every layer, not only the input's border.
    """

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6, residual: bool = False,
                 residual_scale: float = 1.0, label_norm: bool = False, edge_kernel: int = 7) -> None:
        super().__init__()
        if edge_kernel < 1 or edge_kernel % 2 == 0:
            raise ValueError(f"Generator: edge_kernel {edge_kernel}; expected an odd size >= 1 (the paper: 7)")
        pad = edge_kernel // 2
        self.c_dim = c_dim
        self.residual = residual
        self.residual_scale = float(residual_scale)
        ld = c_dim if label_norm else None
        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, conv_dim, edge_kernel, 1, pad, bias=False), _norm(conv_dim, ld), nn.ReLU(inplace=True)]
        dim = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False), _norm(dim * 2, ld), nn.ReLU(inplace=True)]
            dim *= 2
        layers += [ResidualBlock(dim, ld) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False), _norm(dim // 2, ld),
                       nn.ReLU(inplace=True)]
            dim //= 2
        layers += [nn.Conv2d(dim, 3, edge_kernel, 1, pad, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        if residual:
            nn.init.zeros_(layers[-2].weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if c.dim() != 2 or c.size(1) != self.c_dim:
            raise ValueError(f"Generator: label of shape {tuple(c.shape)}; expected [B, {self.c_dim}]")
        c = c.to(x.dtype)
        tiled = c[:, :, None, None].expand(-1, -1, x.size(2), x.size(3))
        h = torch.cat([x, tiled], dim=1)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        out = _run(self.main, h, c)
        return (x + self.residual_scale * out).clamp(-1.0, 1.0) if self.residual else out


class Discriminator(nn.Module):
    """D(x) -> (src [B,1,H/2^r,W/2^r] real/fake patch scores, cls [B,c_dim] domain logits).

    PatchGAN trunk of ``repeat_num`` 4x4 stride-2 convs (channels doubling from ``conv_dim``),
    LeakyReLU(0.01), no normalisation (WGAN-GP penalises per-sample gradients, which batch
    statistics would couple). Two bias-free heads on the last feature map: a 3x3 conv to one
    channel, and a conv whose kernel covers the whole map to ``c_dim`` logits.
    """

    def __init__(self, image_size: int = 128, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        if image_size % (2 ** repeat_num) != 0:
            raise ValueError(f"Discriminator: image_size {image_size} is not divisible by 2^repeat_num = "
                             f"{2 ** repeat_num}; pick d_repeat_num <= log2 of the image side")
        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            dim *= 2
        self.main = nn.Sequential(*layers)
        kernel = image_size // (2 ** repeat_num)
        self.conv_src = nn.Conv2d(dim, 1, 3, 1, 1, bias=False)
        self.conv_cls = nn.Conv2d(dim, c_dim, kernel, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.main(x)
        return self.conv_src(h), self.conv_cls(h).flatten(1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
