"""Exponential moving average of a network's weights (v2's G/F/E, and v1's G when
``train.v1.ema_beta > 0``).

Why: a GAN's last iterate oscillates around a good solution and carries high-frequency artefacts
from the last few adversarial updates; the average over the recent iterates does not (Yazıcı et
al., "The Unusual Effectiveness of Averaging in GAN Training", ICLR 2019). It costs one foreach
lerp per generator update and changes nothing in training itself: only what is evaluated,
sampled and exported.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_ema(model: nn.Module, ema: nn.Module, beta: float) -> None:
    """ema ← β·ema + (1−β)·param for every parameter (one foreach lerp); buffers are copied."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError("EMA net and trained net have different parameter lists")
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
