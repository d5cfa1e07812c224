"""Loss terms of StarGAN (v1) and StarGAN v2 as pure functions of tensors.

Nothing here holds state or knows a network: callers pass logits/images and get scalars back,
so each term is testable alone and the step functions read like the papers' equations.
Penalties (gradient penalty, R1) are computed in fp32 even under autocast: their squared
gradient norms are small differences of large numbers, which bf16 would bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# ------------------------------------------------------------------------- StarGAN (v1)

def wgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    """WGAN critic terms (-E[D(x)], E[D(G(x,c))]) over the PatchGAN map."""
    return -real_logits.float().mean(), fake_logits.float().mean()


def wgan_g_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.float().mean()


def gradient_penalty(critic_out: Tensor, x_hat: Tensor) -> Tensor:
    """WGAN-GP: E[(||∂ΣD(x̂)/∂x̂||₂ − 1)²] with x̂ on lines between real and fake samples.

    ``critic_out`` must come from ``x_hat`` with ``x_hat.requires_grad``; the graph is kept
    (create_graph) so the penalty trains the critic.
    """
    (grad,) = torch.autograd.grad(critic_out.float().sum(), x_hat, create_graph=True)
    norm = grad.float().flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def interpolation_weights(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """One α ~ U(0,1) per sample, [n,1,1,1] on ``device``, drawn from ``generator`` (which may
    live on the CPU while the data is on CUDA). Draw it before queueing GPU work when a CPU
    generator is used: the host-to-device copy then waits on nothing."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, 1, 1, 1, device=gen_device, generator=generator).to(device)


def interpolate(x_real: Tensor, x_fake: Tensor, generator: torch.Generator | None = None,
                alpha: Tensor | None = None) -> Tensor:
    """x̂ = α·x_real + (1−α)·x_fake with one α ~ U(0,1) per sample (``alpha`` if given, else
    drawn from ``generator``); detached, requires grad."""
    if alpha is None:
        alpha = interpolation_weights(x_real.size(0), x_real.device, generator)
    return (alpha * x_real.detach() + (1 - alpha) * x_fake.detach()).requires_grad_(True)


def domain_cls_loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """Domain classification: BCE summed over attributes, averaged over the batch ("multi"),
    or cross-entropy over one-hot classes ("onehot"; ``target`` one-hot or class indices)."""
    logits = logits.float()
    if kind == "multi":
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum") / logits.size(0)
    if kind == "onehot":
        idx = target.argmax(1) if target.dim() == 2 else target
        return F.cross_entropy(logits, idx.long())
    raise ValueError(f"label kind {kind!r}; expected 'multi' or 'onehot'")


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute error: the cycle (v1 λ_rec, v2 λ_cyc) and style-reconstruction term."""
    return (a.float() - b.float()).abs().mean()


# ---------------------------------------------------------------------------- StarGAN v2

def nonsat_loss(logits: Tensor, target: float) -> Tensor:
    """Non-saturating adversarial loss: BCE-with-logits against a constant target (1 real, 0 fake)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def r1_penalty(real_logits: Tensor, x_real: Tensor) -> Tensor:
    """R1 = ½·E_b[ Σ (∂ΣD(x)/∂x)² ] on real images (``x_real.requires_grad`` before D)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), x_real, create_graph=True)
    return 0.5 * grad.float().pow(2).flatten(1).sum(1).mean()


def diversity_loss(fake1: Tensor, fake2: Tensor) -> Tensor:
    """E|G(x,s1) − G(x,s2)|, with the second output detached (as in the paper's code).
    The G objective *subtracts* λ_ds times this."""
    return (fake1.float() - fake2.detach().float()).abs().mean()


def lambda_ds_at(step: int, lambda_ds: float, ds_iter: int) -> float:
    """λ_ds decays linearly from its initial value to 0 at ``ds_iter``; a function of the step,
    so a resumed run sees exactly the value an uninterrupted one would (the official code
    mutated args and restarted the decay on resume)."""
    return max(0.0, lambda_ds * (1.0 - step / ds_iter))
