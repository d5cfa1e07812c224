"""One StarGAN (v1) training iteration as a pure step function over (nets, optimizers, batch).

Order as in the official ``Solver.train`` (one dataset batch; joint training calls this once
per dataset with the same ``step``):

1. targets = the batch's own labels, permuted; LR from the schedule at ``step``.
2. D (every step): -E[D_src(x)] + E[D_src(G(x,c'))] + λ_cls·cls(D_cls(x), c) + λ_gp·GP,
   the fake made without a G graph; gradients averaged (``sync_grads``), then Adam.
   On a G step the fake is made once, with its graph, and D gets it detached: G's weights do not
   change between the two phases, so it is the very tensor the official loop computes twice (the
   same values; one G forward saved on every G step, for holding G's graph through the D phase).
3. G (when ``(step+1) % n_critic == 0``): -E[D_src(G(x,c'))] + λ_cls·cls(D_cls(G(x,c')), c')
   + λ_rec·|x - G(G(x,c'), c)|; D frozen; ``sync_grads``, then Adam; then G_ema (if kept).

The classification terms use the batch's dataset slice of D's output only (the mask vector).
Every loss is checked before its optimizer step: a NaN/inf raises :class:`NonFiniteLossError`
and leaves weights and optimizer state untouched. Nothing here knows Ray, MLflow or DVC.

The losses of 2. and 3. are :func:`d_phase` / :func:`g_phase` (no optimizer work, no host sync), so
the static-buffer step of ``train.cuda_graphs`` (:mod:`stargan.training.v1_graph`) computes the
very same maths.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from stargan.config import TrainConfig
from stargan.data.transforms import to_model_input
from stargan.losses import (domain_cls_loss, gradient_penalty, interpolate, interpolation_weights, l1, wgan_d_loss,
                            wgan_g_loss)
from stargan.models.v1 import Generator
from stargan.training.ema import update_ema
from stargan.training.errors import NonFiniteLossError
from stargan.training.labels import LabelLayout
from stargan.training.nets import V1Nets, V1Optims
from stargan.training.schedules import linear_decay_lr

__all__ = ["NonFiniteLossError", "train_step", "d_phase", "g_phase", "fake_of", "is_g_step", "frozen", "cls_loss",
           "translate", "translation_grid"]

SyncGrads = Callable[[nn.Module], None]


def cls_loss(layout: LabelLayout, dataset_idx: int, logits: Tensor, labels: Tensor) -> Tensor:
    """Domain classification on the dataset's own slice of D's output (other slices: unknown labels)."""
    known = logits[:, layout.cls_slice(dataset_idx)]
    return domain_cls_loss(known, labels, layout.datasets[dataset_idx].kind)


def _no_sync(module: nn.Module) -> None:
    return None


def _amp(cfg: TrainConfig, device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``train.amp_bf16``. ``cache=False`` for CUDA-graph capture: autocast's
    cache of casted weights would outlive the captured region (torch's graph rule)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp_bf16, cache_enabled=cache)


def d_phase(nets: V1Nets, cfg: TrainConfig, layout: LabelLayout, dataset_idx: int, x_real: Tensor,
            label_org: Tensor, c_trg: Tensor, alpha: Tensor, *, amp_cache: bool = True,
            x_fake: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """D loss = -E[D_src(x)] + E[D_src(G(x,c'))] + λ_cls·cls(D_cls(x), c) + λ_gp·GP(α) and its named
    terms (``D/...``); no optimizer work, no host sync. The fake is ``x_fake`` (detached here) when
    given, else G(x, c') made without a G graph.
    Shared by :func:`train_step` and the static-buffer step (:mod:`stargan.training.v1_graph`)."""
    v = cfg.v1
    G, D = nets.G, nets.D
    dev = x_real.device
    if x_fake is None:
        x_fake = fake_of(G, cfg, x_real, c_trg, graph=False, amp_cache=amp_cache)
    x_fake = x_fake.detach().to(x_real.dtype)
    with record_function("D_main"), _amp(cfg, dev, amp_cache):
        # One D pass over [real; fake]: D has no batch statistics, so this equals two passes.
        src, cls = D(torch.cat([x_real, x_fake]))
        src_real, src_fake = src.split(x_real.size(0))
        d_real, d_fake = wgan_d_loss(src_real, src_fake)
        d_cls = cls_loss(layout, dataset_idx, cls[: x_real.size(0)], label_org)
    with record_function("D_gp"), torch.autocast(dev.type, enabled=False):
        x_hat = interpolate(x_real, x_fake, alpha=alpha)
        d_gp = gradient_penalty(D(x_hat)[0], x_hat)
    d_loss = d_real + d_fake + v.lambda_cls * d_cls + v.lambda_gp * d_gp
    return d_loss, {"D/loss_real": d_real, "D/loss_fake": d_fake, "D/loss_cls": d_cls, "D/loss_gp": d_gp,
                    "D/loss": d_loss}


def g_phase(nets: V1Nets, cfg: TrainConfig, layout: LabelLayout, dataset_idx: int, x_real: Tensor,
            label_trg: Tensor, c_org: Tensor, c_trg: Tensor, *, amp_cache: bool = True,
            x_fake: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """G loss = -E[D_src(G(x,c'))] + λ_cls·cls(D_cls(G(x,c')), c') + λ_rec·|x - G(G(x,c'), c)| and its
    named terms (``G/...``). Call it with D frozen (:func:`frozen`): only G's weights get gradients.
    ``x_fake``: G(x, c') already made with its graph (:func:`fake_of`), else made here."""
    v = cfg.v1
    G, D = nets.G, nets.D
    dev = x_real.device
    if x_fake is None:
        x_fake = fake_of(G, cfg, x_real, c_trg, graph=True, amp_cache=amp_cache)
    with record_function("G_main"), _amp(cfg, dev, amp_cache):
        src_fake, cls_fake = D(x_fake)
        g_fake = wgan_g_loss(src_fake)
        g_cls = cls_loss(layout, dataset_idx, cls_fake, label_trg)
    with record_function("G_rec"), _amp(cfg, dev, amp_cache):
        g_rec = l1(x_real, G(x_fake, c_org))
    g_loss = g_fake + v.lambda_rec * g_rec + v.lambda_cls * g_cls
    return g_loss, {"G/loss_fake": g_fake, "G/loss_rec": g_rec, "G/loss_cls": g_cls, "G/loss": g_loss}


def fake_of(G: Generator, cfg: TrainConfig, x_real: Tensor, c_trg: Tensor, *, graph: bool,
            amp_cache: bool = True) -> Tensor:
    """G(x, c'): with its graph for the G phase, without one for a D-only step."""
    with record_function("G_fake"), torch.set_grad_enabled(graph), _amp(cfg, x_real.device, amp_cache):
        return G(x_real, c_trg)


def train_step(nets: V1Nets, optims: V1Optims, batch: dict, cfg: TrainConfig, step: int, layout: LabelLayout,
               dataset_idx: int = 0, sync_grads: SyncGrads = _no_sync,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """One iteration on one dataset's batch (``image`` [B,3,H,W] in [-1,1], or uint8 0..255 as the
    training stream ships it; ``label`` [B,L]).

    Returns the named scalars ``D/...`` (every step), ``G/...`` (on G steps), ``lr/g``, ``lr/d``.
    All randomness (target permutation, GP interpolation) comes from ``generator``, or the
    global RNG when it is None, so a resumed run replays exactly.
    """
    v = cfg.v1
    G, D = nets.G, nets.D
    device = next(G.parameters()).device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x_real = to_model_input(batch["image"], device, memory_format)
    label_org = layout.dataset_labels(dataset_idx, batch["label"].to(device, non_blocking=True))
    label_trg = layout.sample_targets(dataset_idx, label_org, generator)
    c_org = layout.to_model_label(dataset_idx, label_org)
    c_trg = layout.to_model_label(dataset_idx, label_trg)
    # GP weights drawn now, in the same generator order as before: a CPU generator's copy to the
    # device then does not wait for the queued D pass (it was a mid-step sync).
    alpha = interpolation_weights(x_real.size(0), device, generator)

    lr_g = linear_decay_lr(step, v.g_lr, cfg.num_iters, v.num_iters_decay)
    lr_d = linear_decay_lr(step, v.d_lr, cfg.num_iters, v.num_iters_decay)
    _set_lr(optims.g, lr_g)
    _set_lr(optims.d, lr_d)

    g_step = is_g_step(step, v.n_critic)
    x_fake = fake_of(G, cfg, x_real, c_trg, graph=g_step)

    # ------------------------------------------------------------------ D
    optims.d.zero_grad(set_to_none=True)
    d_loss, d_terms = d_phase(nets, cfg, layout, dataset_idx, x_real, label_org, c_trg, alpha, x_fake=x_fake)
    with record_function("D_backward"):
        d_loss.backward()
    with record_function("D_sync"):
        sync_grads(D)
    out = _checked(step, d_terms, "D/grad_norm", D)
    with record_function("D_opt"):
        optims.d.step()

    # ------------------------------------------------------------------ G
    if g_step:
        optims.g.zero_grad(set_to_none=True)
        with frozen(D):
            g_loss, g_terms = g_phase(nets, cfg, layout, dataset_idx, x_real, label_trg, c_org, c_trg,
                                      x_fake=x_fake)
            with record_function("G_backward"):
                g_loss.backward()
        with record_function("G_sync"):
            sync_grads(G)
        out.update(_checked(step, g_terms, "G/grad_norm", G))
        with record_function("G_opt"):
            optims.g.step()
        if nets.G_ema is not None:
            with record_function("G_ema"):
                update_ema(G, nets.G_ema, v.ema_beta)

    out["lr/g"] = lr_g
    out["lr/d"] = lr_d
    return out


def is_g_step(step: int, n_critic: int) -> bool:
    """G trains on every ``n_critic``-th iteration (0-based ``step``), as the official loop."""
    return (step + 1) % n_critic == 0


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No weight gradients for ``module`` (gradients still flow through it to its input)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def _checked(step: int, losses: dict[str, Tensor], norm_name: str, module: nn.Module) -> dict[str, float]:
    """Losses (and the synced gradient norm) as floats, in one device sync; NaN/inf raises.

    The gradient norm is checked after ``sync_grads``: a NaN on any worker reaches every worker
    through the all-reduce, so all of them stop at the same step instead of some hanging.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    values = torch.stack([t.detach().float().reshape(()) for t in losses.values()]
                         + [norm.detach().float().to(next(iter(losses.values())).device)]).tolist()
    names = list(losses) + [norm_name]
    for name, value in zip(names, values):
        if not math.isfinite(value):
            raise NonFiniteLossError(step, name, value)
    return dict(zip(names, values))


# ------------------------------------------------------------------------- sampling

@torch.no_grad()
def translate(G: Generator, x: Tensor, target_model_labels: Tensor) -> Tensor:
    """G(x, c) without a graph; ``target_model_labels`` is [B, c_dim] or one [c_dim] for all."""
    c = target_model_labels.to(x.device)
    if c.dim() == 1:
        c = c.expand(x.size(0), -1)
    return G(x, c)


@torch.no_grad()
def translation_grid(G: Generator, x: Tensor, layout: LabelLayout, dataset_idx: int, labels: Tensor
                     ) -> tuple[Tensor, list[str]]:
    """The official sample grid: per row the input, then its translation into every target of
    every dataset (``layout.all_target_names()``), side by side: [B, 3, H, W·(1+targets)]."""
    targets = layout.all_test_targets(dataset_idx, labels.to(x.device))
    images = [x] + [translate(G, x, c).to(x.dtype) for _, c in targets]
    return torch.cat(images, dim=3), ["input"] + [name for name, _ in targets]
