"""The arithmetic of data-parallel scaling: what our step all-reduces, and what that costs.

Why a module and not a paragraph: the figures in docs/scaling.md are only as good as the count
behind them, and the count must follow the code. Here it is written down once, tested against the
step functions themselves (``tests/test_scaling_model.py`` runs ``v1_step``/``v2_step`` with a
recording ``sync_grads``), and turned into JSON by ``stargan bench scaling``.

What our code all-reduces (``stargan/training/distributed.py``): after each phase's backward, one
flat fp32 all-reduce per network that the phase updates, of that network's parameters with
``requires_grad`` (no overlap with the backward, no bucketing, no compression):

- v1, per iteration and dataset batch: D (every iteration), G (every ``n_critic``-th iteration);
- v2, per iteration: D (``D_latent``), D (``D_ref``), G, F, E (``G_latent``: three calls),
  G (``G_ref``).

Cost model (the classic alpha-beta model of a ring all-reduce, Patarasuk & Yuan 2009): an
all-reduce of ``S`` bytes over ``N`` GPUs sends ``2 (N-1)/N x S`` bytes through every GPU's link,
in ``2 (N-1)`` sequential steps, so ``T = 2 (N-1)/N x S / B + 2 (N-1) x alpha`` with ``B`` the
ring's bandwidth per GPU (see :data:`LINKS`) and ``alpha`` the per-step latency (NCCL may pick a
tree, whose latency grows with log N: the ring's latency term is the pessimistic one). The step time grows by the sum of
these (nothing overlaps), so with the per-GPU batch fixed (weak scaling) the efficiency is
``t / (t + T_iter)`` for a single-GPU iteration time ``t``: exactly 1 at ``N = 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["AllReduce", "Link", "LINKS", "trainable_numel", "v1_nets", "v2_nets", "v1_allreduces",
           "v2_allreduces", "ring_allreduce_seconds", "comm_seconds_per_iter", "efficiency",
           "compute_for_efficiency", "wire_bytes_per_gpu"]

FP32_BYTES = 4       # gradients are fp32 even under bf16 autocast: the parameters are fp32


@dataclass(frozen=True)
class AllReduce:
    """One ``sync_grads(net)`` call of a step: ``per_iter`` calls per iteration on average."""
    phase: str
    net: str
    numel: int
    per_iter: float

    @property
    def bytes(self) -> int:
        return self.numel * FP32_BYTES


@dataclass(frozen=True)
class Link:
    """A ring's bandwidth per GPU (``bytes_per_s`` each way), its ``latency_s`` per ring step, and
    the most GPUs it can join (NVLink stops at the node: ``max_gpus``; None = a network, no limit)."""
    name: str
    bytes_per_s: float
    latency_s: float
    max_gpus: int | None
    note: str


# Nominal line rates (best case: a real ring reaches less; measure with nccl-tests and pass that).
# ``bytes_per_s`` is the ring's bandwidth per GPU. Across nodes every ring (NCCL channel) leaves and
# enters each node once, so a node's rings share its network links: one link of rate R per node
# gives R; K links, with the channels spread over them, give K x R, up to NVLink's rate.
LINKS: tuple[Link, ...] = (
    Link("NVLink", 450e9, 2e-6, 8, "NVLink 4 of an 8-GPU H100 SXM node: 900 GB/s per GPU both ways = 450 GB/s "
                                   "each way; only inside one node"),
    Link("8x400 Gb/s per node", 400e9, 5e-6, None, "one 400 Gb/s NIC per GPU (HGX/DGX H100 compute fabric): "
                                                   "8 x 50 GB/s shared by the node's rings"),
    Link("400 Gb/s per node", 50e9, 5e-6, None, "one 400 Gb/s InfiniBand/RoCE link per node = 50 GB/s each way"),
    Link("100 Gb/s per node", 12.5e9, 5e-6, None, "one 100 Gb/s Ethernet/RoCE link per node = 12.5 GB/s each way"),
)


def trainable_numel(module: nn.Module) -> int:
    """What ``make_sync_grads`` flattens for ``module``: its parameters with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def v1_nets(image_size: int = 128, c_dim: int = 5, cls_dim: int | None = None, conv_dim: int = 64,
            g_repeat_num: int = 6, d_repeat_num: int = 6) -> dict[str, nn.Module]:
    """The v1 G and D as ``build_v1`` builds them (same classes and arguments), on the meta device
    (no memory, no init). ``cls_dim`` defaults to ``c_dim`` (one dataset, no mask vector)."""
    from stargan.models.v1 import Discriminator, Generator

    with torch.device("meta"):
        return {"G": Generator(conv_dim, c_dim, g_repeat_num),
                "D": Discriminator(image_size, conv_dim, c_dim if cls_dim is None else cls_dim, d_repeat_num)}


def v2_nets(image_size: int = 256, num_domains: int = 2, w_hpf: float = 1.0, style_dim: int = 64,
            latent_dim: int = 16, max_conv_dim: int = 512, mapping_hidden: int = 512) -> dict[str, nn.Module]:
    """The trained v2 nets G, F, E, D as ``build_v2`` builds them, on the meta device. The FAN
    (``w_hpf > 0``) is frozen and never all-reduced, so it is not here."""
    from stargan.models.v2 import Discriminator, Generator, MappingNetwork, StyleEncoder

    with torch.device("meta"):
        return {"G": Generator(image_size, style_dim, max_conv_dim, w_hpf),
                "F": MappingNetwork(latent_dim, style_dim, num_domains, mapping_hidden),
                "E": StyleEncoder(image_size, style_dim, num_domains, max_conv_dim),
                "D": Discriminator(image_size, num_domains, max_conv_dim)}


def v1_allreduces(nets: dict[str, nn.Module], n_critic: int = 5, datasets: int = 1) -> list[AllReduce]:
    """v1's calls per iteration: ``v1_step.train_step`` runs once per dataset batch (``datasets``
    > 1 in joint training), syncing D every time and G when ``(step+1) % n_critic == 0``."""
    if n_critic < 1 or datasets < 1:
        raise ValueError(f"n_critic ({n_critic}) and datasets ({datasets}) must be >= 1")
    return [AllReduce("D", "D", trainable_numel(nets["D"]), float(datasets)),
            AllReduce("G", "G", trainable_numel(nets["G"]), datasets / n_critic)]


def v2_allreduces(nets: dict[str, nn.Module]) -> list[AllReduce]:
    """v2's calls per iteration, in ``v2_step.train_step``'s order."""
    n = {k: trainable_numel(m) for k, m in nets.items()}
    return [AllReduce("D_latent", "D", n["D"], 1.0), AllReduce("D_ref", "D", n["D"], 1.0),
            AllReduce("G_latent", "G", n["G"], 1.0), AllReduce("G_latent", "F", n["F"], 1.0),
            AllReduce("G_latent", "E", n["E"], 1.0), AllReduce("G_ref", "G", n["G"], 1.0)]


def _check_gpus(n: int) -> None:
    if n < 1:
        raise ValueError(f"the number of GPUs must be >= 1, got {n}")


def wire_bytes_per_gpu(nbytes: float, n: int) -> float:
    """Bytes one GPU sends (and receives) in a ring all-reduce of ``nbytes``: ``2 (n-1)/n x nbytes``."""
    _check_gpus(n)
    return 2 * (n - 1) / n * nbytes


def ring_allreduce_seconds(nbytes: float, n: int, link: Link) -> float:
    """``2 (n-1)/n x nbytes / B + 2 (n-1) x alpha``; 0 on one GPU (``sync_grads`` is then a no-op)."""
    _check_gpus(n)
    if n == 1:
        return 0.0
    return wire_bytes_per_gpu(nbytes, n) / link.bytes_per_s + 2 * (n - 1) * link.latency_s


def comm_seconds_per_iter(plan: list[AllReduce], n: int, link: Link) -> float:
    """Average all-reduce time added to one iteration (each call in full: the code does not overlap)."""
    return sum(a.per_iter * ring_allreduce_seconds(a.bytes, n, link) for a in plan)


def efficiency(t_compute_s: float, t_comm_s: float) -> float:
    """Weak-scaling efficiency ``t / (t + T)``: throughput per GPU at N over that at 1."""
    if t_compute_s <= 0 or t_comm_s < 0:
        raise ValueError(f"need t_compute > 0 and t_comm >= 0, got {t_compute_s}, {t_comm_s}")
    return t_compute_s / (t_compute_s + t_comm_s)


def compute_for_efficiency(t_comm_s: float, target: float = 0.9) -> float:
    """The single-GPU iteration time at which ``efficiency`` reaches ``target``: ``T x e / (1 - e)``."""
    if not 0 < target < 1:
        raise ValueError(f"target efficiency must be in (0, 1), got {target}")
    return t_comm_s * target / (1 - target)
