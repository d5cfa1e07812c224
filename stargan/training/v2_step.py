"""One StarGAN v2 training iteration as four named phases plus EMA, and the sampling helpers.

Order (as the paper's code): ``D_latent``, ``D_ref`` (update D), ``G_latent`` (update G, F, E),
``G_ref`` (update G only: E learns only from the latent pass), then ``EMA`` of G, F, E.
``d_phase`` / ``g_phase`` compute one phase's loss and named terms without touching optimizers, so
each is testable alone; :func:`train_step` runs them with the optimizer bookkeeping.

Differences from the official code, none changing the maths:
- λ_ds is a function of the step (:func:`stargan.losses.lambda_ds_at`), so resume is exact.
- ``x_real`` gets ``requires_grad`` only for D's real pass (R1); the G passes see a plain tensor.
- the second fake of the diversity term is made under ``no_grad`` (it is only used detached).
- nets that a phase does not update have ``requires_grad`` off during it, so no weight gradients
  are computed for them (the official computes and then discards them).
- with ``amp_bf16`` the forwards run in bf16 autocast except D's pass on real images, whose
  input gradient is the R1 penalty: that pass and the penalty stay fp32.
- with ``fast_ops`` two pairs of passes run batched, which per-sample nets allow exactly: the
  no-grad fakes of both D phases (G, F, E are not updated between them) in one G pass, and in the
  latent G phase E(G(x, s̃)) and E(x) in one E pass. D passes differentiated once go through
  ``nets.D_single`` (compiled with ``train.compile``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from stargan.config import TrainConfig
from stargan.data.transforms import to_model_input
from stargan.losses import diversity_loss, l1, lambda_ds_at, nonsat_loss, r1_penalty
from stargan.training.nets import V2Nets, V2Optims
from stargan.training.ema import update_ema
from stargan.training.errors import NonFiniteLossError

__all__ = ["NonFiniteLossError", "train_step", "d_phase", "g_phase", "update_ema", "fan_masks",
           "translate_latent", "translate_reference", "BATCH_KEYS"]

BATCH_KEYS = ("x_src", "y_src", "x_ref", "x_ref2", "y_ref")
Masks = tuple[Tensor, Tensor] | None


def _autocast(cfg: TrainConfig, device: torch.device, enabled: bool = True):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=bool(cfg.amp_bf16 and enabled))


@contextlib.contextmanager
def _trainable_only(nets: V2Nets, names: tuple[str, ...]) -> Iterator[None]:
    """Turn off ``requires_grad`` of the trained nets not in ``names`` for one phase."""
    frozen = [m for k, m in nets.trained().items() if k not in names]
    for m in frozen:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m in frozen:
            m.requires_grad_(True)


def fan_masks(nets: V2Nets, x: Tensor) -> Masks:
    """(coarse, fine) FAN heatmap masks of ``x`` when the nets carry a FAN (``w_hpf > 0``)."""
    if nets.fan is None:
        return None
    with torch.no_grad():
        return nets.fan.get_heatmap(x)


def d_phase(nets: V2Nets, cfg: TrainConfig, x_real: Tensor, y_org: Tensor, y_trg: Tensor, *,
            z_trg: Tensor | None = None, x_ref: Tensor | None = None, masks: Masks = None,
            x_fake: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """D loss = BCE(D(x), 1) + BCE(D(G(x, s̃)), 0) + λ_reg·R1(x); s̃ from F(z) or E(x_ref).
    ``x_fake``: the no-grad fake G(x, s̃) when the caller made it already (then z_trg/x_ref unused)."""
    if x_fake is None and (z_trg is None) == (x_ref is None):
        raise ValueError("d_phase takes exactly one of z_trg (latent) or x_ref (reference)")
    dev = x_real.device
    x_leaf = x_real.detach().requires_grad_(True)
    with _autocast(cfg, dev, enabled=False):          # fp32: its input gradient is R1
        out = nets.D(x_leaf, y_org)
    loss_real = nonsat_loss(out, 1.0)
    loss_reg = r1_penalty(out, x_leaf)
    with _autocast(cfg, dev):
        if x_fake is None:
            with torch.no_grad():
                s_trg = nets.F(z_trg, y_trg) if z_trg is not None else nets.E(x_ref, y_trg)
                x_fake = nets.G(x_real.detach(), s_trg, masks=masks)
        out = nets.D_single(x_fake.detach(), y_trg)
    loss_fake = nonsat_loss(out, 0.0)
    loss = loss_real + loss_fake + cfg.v2.lambda_reg * loss_reg
    return loss, {"real": loss_real.detach(), "fake": loss_fake.detach(), "reg": loss_reg.detach()}


def g_phase(nets: V2Nets, cfg: TrainConfig, x_real: Tensor, y_org: Tensor, y_trg: Tensor, *,
            lambda_ds: float, z_trgs: tuple[Tensor, Tensor] | None = None,
            x_refs: tuple[Tensor, Tensor] | None = None, masks: Masks = None,
            ) -> tuple[Tensor, dict[str, Tensor]]:
    """G loss = adv + λ_sty·|E(G(x,s̃)) − s̃| − λ_ds·|G(x,s̃1) − G(x,s̃2)| + λ_cyc·|G(G(x,s̃), E(x)) − x|."""
    if (z_trgs is None) == (x_refs is None):
        raise ValueError("g_phase takes exactly one of z_trgs (latent) or x_refs (reference)")
    v2 = cfg.v2
    x_real = x_real.detach()

    def style(i: int) -> Tensor:
        return nets.F(z_trgs[i], y_trg) if z_trgs is not None else nets.E(x_refs[i], y_trg)

    with _autocast(cfg, x_real.device):
        s_trg = style(0)
        x_fake = nets.G(x_real, s_trg, masks=masks)
        loss_adv = nonsat_loss(nets.D_single(x_fake, y_trg), 1.0)
        # One E pass over [fake; real] when E is trained (per-sample net: same values, and
        # the real half needs a backward anyway); separate passes when E is frozen.
        batch_e = cfg.fast_ops and any(p.requires_grad for p in nets.E.parameters())
        if batch_e:
            s_pred, s_org = nets.E(torch.cat([x_fake, x_real.to(x_fake.dtype)]),
                                   torch.cat([y_trg, y_org])).split(x_real.size(0))
        else:
            s_pred = nets.E(x_fake, y_trg)
        loss_sty = l1(s_pred, s_trg)
        with torch.no_grad():
            x_fake2 = nets.G(x_real, style(1), masks=masks)
        loss_ds = diversity_loss(x_fake, x_fake2)
        masks_fake = fan_masks(nets, x_fake)
        if not batch_e:
            s_org = nets.E(x_real, y_org)
        x_rec = nets.G(x_fake, s_org, masks=masks_fake)
        loss_cyc = l1(x_rec, x_real)
    loss = loss_adv + v2.lambda_sty * loss_sty - lambda_ds * loss_ds + v2.lambda_cyc * loss_cyc
    return loss, {"adv": loss_adv.detach(), "sty": loss_sty.detach(), "ds": loss_ds.detach(),
                  "cyc": loss_cyc.detach()}


def _check_finite(step: int, prefix: str, loss: Tensor, terms: dict[str, Tensor]) -> None:
    values = torch.stack([loss.detach().float()] + [t.float() for t in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    names = ["total", *terms]
    for name, v in zip(names, values.tolist()):
        if not torch.isfinite(torch.tensor(v)):
            raise NonFiniteLossError(step, f"{prefix}_{name}", v)


def _optimize(step: int, prefix: str, loss: Tensor, terms: dict[str, Tensor],
              modules: list[nn.Module], optims: list[torch.optim.Optimizer],
              all_optims: V2Optims, sync_grads: Callable[[nn.Module], None]) -> None:
    _check_finite(step, prefix, loss, terms)
    for opt in (all_optims.G, all_optims.F, all_optims.E, all_optims.D):
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for m in modules:
        sync_grads(m)
    for opt in optims:
        opt.step()


def train_step(nets: V2Nets, optims: V2Optims, batch: dict[str, Tensor], cfg: TrainConfig, step: int,
               sync_grads: Callable[[nn.Module], None] = lambda m: None,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """One iteration; ``step`` is the 0-based index of this iteration (steps already done).

    ``batch``: ``x_src, y_src, x_ref, x_ref2, y_ref`` (images float in [-1, 1] or uint8 0..255 as the
    training stream ships them; y int64 domain indices); the target domain is
    the reference's (``y_trg := y_ref``). z, z2 ~ N(0, I) are drawn from ``generator``.
    Raises :class:`NonFiniteLossError` before the optimizer step of the phase whose loss is not
    finite (earlier phases of this iteration have already been applied).
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"v2 batch lacks {missing}; expected keys {BATCH_KEYS}")
    mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
    dev = next(nets.G.parameters()).device            # loader batches arrive on the CPU
    x_real, x_ref, x_ref2 = (to_model_input(batch[k], dev, mf) for k in ("x_src", "x_ref", "x_ref2"))
    y_org, y_trg = (batch[k].to(dev, non_blocking=True).long() for k in ("y_src", "y_ref"))
    b = x_real.size(0)
    z_dev = generator.device if generator is not None else dev   # a CPU generator may drive CUDA
    z_trg = torch.randn(b, cfg.v2.latent_dim, device=z_dev, generator=generator).to(dev)
    z_trg2 = torch.randn(b, cfg.v2.latent_dim, device=z_dev, generator=generator).to(dev)
    lam_ds = lambda_ds_at(step, cfg.v2.lambda_ds, cfg.v2.ds_iter)
    masks = fan_masks(nets, x_real)
    out: dict[str, Tensor] = {}
    fakes: dict[str, Tensor] = {}
    if cfg.fast_ops:
        # G, F, E do not change between the two D phases: both no-grad fakes in one G pass.
        with record_function("D_fakes"), torch.no_grad(), _autocast(cfg, dev):
            s = torch.cat([nets.F(z_trg, y_trg), nets.E(x_ref, y_trg)])
            m2 = None if masks is None else tuple(torch.cat([m, m]) for m in masks)
            fakes = dict(zip(("latent", "ref"), nets.G(torch.cat([x_real, x_real]), s, masks=m2).split(b)))

    with _trainable_only(nets, ("D",)):
        for phase, kw in (("latent", {"z_trg": z_trg}), ("ref", {"x_ref": x_ref})):
            if phase in fakes:
                kw = {"x_fake": fakes[phase]}
            with record_function(f"D_{phase}"):
                loss, terms = d_phase(nets, cfg, x_real, y_org, y_trg, masks=masks, **kw)
                _optimize(step, f"D/{phase}", loss, terms, [nets.D], [optims.D], optims, sync_grads)
            out.update({f"D/{phase}_{k}": v for k, v in terms.items()})

    with _trainable_only(nets, ("G", "F", "E")), record_function("G_latent"):
        loss, terms = g_phase(nets, cfg, x_real, y_org, y_trg, lambda_ds=lam_ds,
                              z_trgs=(z_trg, z_trg2), masks=masks)
        _optimize(step, "G/latent", loss, terms, [nets.G, nets.F, nets.E],
                  [optims.G, optims.F, optims.E], optims, sync_grads)
    out.update({f"G/latent_{k}": v for k, v in terms.items()})

    with _trainable_only(nets, ("G",)), record_function("G_ref"):
        loss, terms = g_phase(nets, cfg, x_real, y_org, y_trg, lambda_ds=lam_ds,
                              x_refs=(x_ref, x_ref2), masks=masks)
        _optimize(step, "G/ref", loss, terms, [nets.G], [optims.G], optims, sync_grads)
    out.update({f"G/ref_{k}": v for k, v in terms.items()})

    with record_function("EMA"):
        beta = cfg.v2.ema_beta
        update_ema(nets.G, nets.G_ema, beta)
        update_ema(nets.F, nets.F_ema, beta)
        update_ema(nets.E, nets.E_ema, beta)

    scalars = dict(zip(out, torch.stack([v.float() for v in out.values()]).tolist()))
    scalars["G/lambda_ds"] = lam_ds
    return scalars


@torch.no_grad()
def translate_latent(nets: V2Nets, x: Tensor, y_trg: Tensor, z: Tensor) -> Tensor:
    """Latent-guided translation with the EMA nets: G_ema(x, F_ema(z, y_trg))."""
    s = nets.F_ema(z, y_trg)
    return nets.G_ema(x, s, masks=fan_masks(nets, x))


@torch.no_grad()
def translate_reference(nets: V2Nets, x: Tensor, x_ref: Tensor, y_trg: Tensor) -> Tensor:
    """Reference-guided translation with the EMA nets: G_ema(x, E_ema(x_ref, y_trg))."""
    s = nets.E_ema(x_ref, y_trg)
    return nets.G_ema(x, s, masks=fan_masks(nets, x))
