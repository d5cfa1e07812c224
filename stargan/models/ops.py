"""Fast-path building blocks shared by the v1 and v2 networks (``train.fast_ops``).

Each computes the same function as the torch op it replaces (tests/test_fast_path.py checks the
values, the gradients and, for the pooling, the double backward), but keeps the memory format of
its input and costs fewer kernels on a GPU:

- :func:`instance_norm`: ``F.instance_norm`` reshapes to ``[1, B·C, H, W]`` and runs batch norm,
  which copies a channels_last tensor to NCHW and back (on an H100 those transposes were ~20 % of
  the official v1 iteration). Here: one ``var_mean`` over (H, W) and one ``addcmul`` with a
  per-(sample, channel) scale and shift, in whatever layout the input has. An optional
  ``(gamma, beta)`` folds AdaIN's ``(1 + γ)·IN(x) + β`` into the same scale and shift.
- :func:`avg_pool2x`: 2x2 average pooling as a reshape + mean. ``avg_pool2d``'s backward kernel
  is slow on CUDA (~11 % of the official v2 iteration), and R1's double backward runs it again;
  a mean's backward is a broadcast, and its double backward another mean.

The default path (``fast_ops: false``) does not use these: it keeps the stock torch ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["instance_norm", "avg_pool2x", "InstanceNorm", "set_fast_ops", "compile_module", "compile_blocks"]


def instance_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5,
                  gamma: Tensor | None = None, beta: Tensor | None = None) -> Tensor:
    """Per-sample, per-channel normalisation over (H, W), biased variance, then
    ``x̂·w + b`` (affine) and/or ``(1 + γ)·x̂ + β`` (AdaIN; γ, β of shape [B, C, 1, 1]).

    Statistics are reduced with fp32 accumulation; the small per-channel scale and shift are
    formed in fp32 and cast to ``x.dtype`` (bf16 under autocast) for the one full-size pass, so
    the output keeps the input's dtype and memory format.
    """
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    scale = torch.rsqrt(var.float() + eps)
    shift = -mean.float() * scale
    if weight is not None:
        w = weight.float()[None, :, None, None]
        scale, shift = scale * w, shift * w
    if bias is not None:
        shift = shift + bias.float()[None, :, None, None]
    if gamma is not None:
        g = 1 + gamma.float()
        scale, shift = scale * g, shift * g
    if beta is not None:
        shift = shift + beta.float()
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


def avg_pool2x(x: Tensor) -> Tensor:
    """``F.avg_pool2d(x, 2)`` for even H, W, as a mean over 2x2 blocks of a free reshape."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        return F.avg_pool2d(x, 2)
    if c > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
        return y.permute(0, 3, 1, 2)
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean((3, 5))


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same parameters and state-dict keys, no running statistics) that
    switches to :func:`instance_norm` when ``fast`` is set (see :func:`set_fast_ops`)."""

    fast: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.fast or self.track_running_stats or x.dim() != 4:
            return super().forward(x)
        return instance_norm(x, self.weight, self.bias, self.eps)


def set_fast_ops(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the fast ops on (or off) in every submodule that has a ``fast`` switch."""
    for m in module.modules():
        if hasattr(type(m), "fast") or "fast" in vars(m):
            m.fast = enabled
    return module


def apply_backend_flags(tf32: bool, device: torch.device | str | None) -> None:
    """``train.tf32`` on CUDA: TF32 matmuls and convs, cuDNN autotuning. These are process-wide
    torch flags (torch has no per-module switch); nothing is changed when off or on CPU."""
    if not tf32 or device is None or torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def compile_module(module: nn.Module) -> nn.Module:
    """``module.compile()`` in place (state-dict keys unchanged, unlike ``torch.compile(m)``).
    Only for modules whose graph is never differentiated twice: inductor has no double backward."""
    module.compile()
    return module


def compile_blocks(module: nn.Module, block_types: tuple[type, ...], backend: str = "inductor") -> list[str]:
    """Regional compilation: ``compile()`` every submodule of ``block_types`` in place; returns their names.

    Why: compiling whole v2 nets took more than 290 s of warm-up on an H100. Blocks of one class
    share their ``forward`` code, and dynamo (which treats module parameters as inputs) reuses a
    compiled graph for every block with the same input shapes, so warm-up compiles one graph per
    distinct block shape instead of one per net. Same caveat as :func:`compile_module`: only blocks
    never differentiated twice."""
    names = []
    for name, m in module.named_modules():
        if isinstance(m, block_types):
            m.compile(backend=backend)
            names.append(name)
    return names


def use_compile_cache(directory: str | None) -> str | None:
    """Point inductor's on-disk cache (compiled kernels, FX graphs) at ``directory`` unless the
    environment already names one (``TORCHINDUCTOR_CACHE_DIR`` wins), so a rerun on the same machine
    loads instead of compiling. Returns the directory in use (None: inductor's default under /tmp)."""
    import os

    if directory and not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.makedirs(directory, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(directory)
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR")
