"""LPIPS v0.1 (Zhang et al., CVPR 2018) with AlexNet features, as StarGAN v2 measures diversity.

The backbone is torchvision's AlexNet ``features`` (state-dict keys ``features.{0,3,6,8,10}.*``,
the ImageNet weights ``alexnet-owt-7be5be79.pth``); the learned 1x1 linear layers are the
official LPIPS file ``alex.pth`` (keys ``lin{0..4}.model.1.weight``). Distance between images
in [-1, 1]: scale with LPIPS's shift/scale, take the five ReLU outputs, unit-normalise each
feature vector over channels, square the differences, weight channels by the linear layer,
average over space, and sum over the five layers.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stargan.evaluation.inception import load_state_dict_checked

CHANNELS = (64, 192, 384, 256, 256)
MIN_SIDE = 32        # smaller inputs vanish in AlexNet's pools; they are upsampled to this side


class AlexNetFeatures(nn.Module):
    """torchvision ``alexnet().features`` layout; ``forward`` returns the 5 ReLU outputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2))

    def forward(self, x: Tensor) -> list[Tensor]:
        taps, out = {1, 4, 7, 9, 11}, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                out.append(x)
            if i == 11:
                break
        return out


class _Lin(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(cin, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model[1](x)         # dropout is off at evaluation


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = AlexNetFeatures()
        for i, c in enumerate(CHANNELS):
            setattr(self, f"lin{i}", _Lin(c))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    @staticmethod
    def _unit(f: Tensor, eps: float = 1e-10) -> Tensor:
        return f / (torch.sqrt((f * f).sum(1, keepdim=True)) + eps)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance per pair -> [B] (images in [-1, 1])."""
        if min(a.shape[-2:]) < MIN_SIDE:
            size = (MIN_SIDE * a.shape[-2] // min(a.shape[-2:]), MIN_SIDE * a.shape[-1] // min(a.shape[-2:]))
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        fa = self.net((a - self.shift) / self.scale)
        fb = self.net((b - self.shift) / self.scale)
        total = 0
        for i, (x, y) in enumerate(zip(fa, fb)):
            d = (self._unit(x) - self._unit(y)) ** 2
            total = total + getattr(self, f"lin{i}")(d).mean(dim=(2, 3))
        return total.flatten()


def load_lpips(lin_path: str | Path, alexnet_path: str | Path, device: str | torch.device = "cpu") -> LPIPS:
    net = LPIPS()
    alex = torch.load(alexnet_path, map_location="cpu", weights_only=True)
    feats = {k: v for k, v in alex.items() if k.startswith("features.")}
    load_state_dict_checked(net.net, feats, str(alexnet_path))
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    lin_net = nn.ModuleDict({f"lin{i}": getattr(net, f"lin{i}") for i in range(len(CHANNELS))})
    load_state_dict_checked(lin_net, {k: v for k, v in lin.items() if k.startswith("lin")}, str(lin_path))
    return net.eval().requires_grad_(False).to(device)


@torch.no_grad()
def mean_pairwise(lpips: LPIPS, outputs: list[Tensor]) -> Tensor:
    """Mean LPIPS over all pairs of ``outputs`` (each [B,3,H,W]: one per style) -> [B]."""
    n = len(outputs)
    if n < 2:
        raise ValueError("diversity needs at least 2 outputs per source image")
    total = 0
    for i in range(n):
        for j in range(i + 1, n):
            total = total + lpips(outputs[i], outputs[j])
    return total / (n * (n - 1) / 2)
