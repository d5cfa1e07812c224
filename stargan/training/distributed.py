"""Data-parallel gradient averaging without DDP wrappers.

The WGAN-GP and R1 penalties differentiate through D twice (``create_graph=True``), which
torch's DDP reducer does not support; wrapping would also leak ``module.`` into checkpoint keys
(a known bug of the official v2 code). So every worker computes its own gradients and we average
them with one flat all-reduce per network before the optimizer step — the same arithmetic as DDP,
done explicitly.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def make_sync_grads() -> Callable[[nn.Module], None]:
    """A ``sync_grads(module)`` that averages gradients over workers (a no-op in one process)."""
    if not is_distributed():
        return lambda module: None
    world = dist.get_world_size()

    def sync(module: nn.Module) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone() if p.grad is None else p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    return sync


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every worker start from rank ``src``'s weights and buffers."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars over workers so rank 0 logs the global figure."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def gather_rng(rng: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's RNG states, for rank 0's checkpoint: rank 0's under their own names, rank r's
    under ``rank<r>/<name>``. Each rank draws its own GP alphas and targets; a checkpoint holding
    rank 0's states only would give every rank rank 0's stream on resume, so a resumed
    multi-worker run would differ from an uninterrupted one. A collective: every rank calls it."""
    if not is_distributed():
        return rng
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, {k: v.cpu() for k, v in rng.items()})
    merged = dict(states[0])
    for r, theirs in enumerate(states[1:], start=1):
        merged.update({f"rank{r}/{k}": v for k, v in theirs.items()})
    return merged


def own_rng(rng: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """This rank's RNG states out of :func:`gather_rng`'s dict (rank 0's for a checkpoint written
    before ranks kept their own, or by another world size)."""
    base = {k: v for k, v in rng.items() if not k.startswith("rank")}
    prefix = f"rank{rank}/"
    mine = {k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}
    return mine or base
