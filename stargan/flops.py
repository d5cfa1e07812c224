"""Floating-point operation counts of the networks and of whole training iterations.

Counted, not estimated: a dispatch mode with the formulas of
:mod:`torch.utils.flop_counter` (``flop_registry``, the ones ``FlopCounterMode`` uses) intercepts every aten
op (convolutions, transposed convolutions, matmuls and their backward and double-backward ops) and
adds its multiply-adds x 2. Element-wise ops, norms and reductions are not counted (they are
memory-bound; the usual convention). Per-network forward counts run on the ``meta`` device, so
they cost no memory and no arithmetic; ``tests/test_flops.py`` checks them against the
reference's per-image figures (v1 G 19.9 / D 1.37 GFLOP at 128 px, v2 G 97.3 / E, D 33.1 at 256 px).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["count_flops", "forward_flops", "v1_forward_gflops", "v2_forward_gflops"]


class _Counter(TorchDispatchMode):
    """``FlopCounterMode``'s arithmetic without its module tracker: the tracker's backward hooks
    break ``autograd.grad`` on a leaf (the gradient penalty / R1), so it cannot count a training
    iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn()`` runs through aten (forward, backward, double backward)."""
    with _Counter() as counter:
        fn()
    return counter.total


def forward_flops(module: nn.Module, *inputs: object) -> int:
    """FLOPs of one ``module(*inputs)`` call without a graph."""
    with torch.no_grad():
        return count_flops(lambda: module(*inputs))


def v1_forward_gflops(image_size: int = 128, c_dim: int = 5, g_conv_dim: int = 64, d_conv_dim: int = 64,
                      g_repeat_num: int = 6, d_repeat_num: int = 6) -> dict[str, float]:
    """Per-image forward GFLOPs of the v1 G and D (built on the meta device)."""
    from stargan.models.v1 import Discriminator, Generator

    with torch.device("meta"):
        G = Generator(g_conv_dim, c_dim, g_repeat_num)
        D = Discriminator(image_size, d_conv_dim, c_dim, d_repeat_num)
        x, c = torch.empty(1, 3, image_size, image_size), torch.empty(1, c_dim)
        return {"G": forward_flops(G, x, c) / 1e9, "D": forward_flops(D, x) / 1e9}


def v2_forward_gflops(image_size: int = 256, num_domains: int = 3, style_dim: int = 64, latent_dim: int = 16,
                      max_conv_dim: int = 512, mapping_hidden: int = 512, w_hpf: float = 0.0) -> dict[str, float]:
    """Per-image forward GFLOPs of the v2 G, F (mapping), E and D (built on the meta device)."""
    from stargan.models.v2 import Discriminator, Generator, MappingNetwork, StyleEncoder

    with torch.device("meta"):
        G = Generator(image_size, style_dim, max_conv_dim, w_hpf)
        Fm = MappingNetwork(latent_dim, style_dim, num_domains, mapping_hidden)
        E = StyleEncoder(image_size, style_dim, num_domains, max_conv_dim)
        D = Discriminator(image_size, num_domains, max_conv_dim)
        x, s = torch.empty(1, 3, image_size, image_size), torch.empty(1, style_dim)
        z, y = torch.empty(1, latent_dim), torch.zeros(1, dtype=torch.long)
        return {"G": forward_flops(G, x, s) / 1e9, "F": forward_flops(Fm, z, y) / 1e9,
                "E": forward_flops(E, x, y) / 1e9, "D": forward_flops(D, x, y) / 1e9}
