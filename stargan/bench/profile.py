"""Kernel profile of a training iteration (``stargan bench train --profile FILE``).

Why: v2 at 256 px runs at ~47 TFLOP/s on an H100, far under its bf16 conv rate, so the time is in
slow kernels (the fp32 R1 double backward, element-wise passes, transposes are the suspects), and
a GPU session has minutes, not hours, to find out which. After a variant is timed, a few more of
its iterations run under ``torch.profiler``; this writes, per variant, the top kernels by self
device time (on a CPU, the top aten ops by self CPU time) with their share, calls and time per
iteration, and the step's named phases (the ``record_function`` ranges ``D_main``, ``D_gp``,
``G_latent``, ...), so the table reads like the algorithm.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def _row(e, per_iter: float, total: float, field: str) -> dict:
    self_us = getattr(e, field)
    return {"name": e.key[:240], "calls_per_iter": round(e.count * per_iter, 2),
            "self_ms_per_iter": round(self_us * per_iter / 1e3, 4),
            "share": round(self_us / total, 4) if total else 0.0}


def profile_iterations(step: Callable[[int], object], start: int, iters: int, device: torch.device,
                       top: int = 40) -> dict:
    """Run ``step(start) .. step(start + iters - 1)`` under the profiler; the tables as a dict."""
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for i in range(start, start + iters):
            step(i)
        if on_gpu:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    field = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    kernels = [e for e in events if not e.is_user_annotation and getattr(e, field) > 0]
    total = sum(getattr(e, field) for e in kernels)
    kernels.sort(key=lambda e: getattr(e, field), reverse=True)
    per_iter = 1.0 / iters
    phases = sorted((e for e in events if e.is_user_annotation), key=lambda e: e.key)
    return {
        "iterations": iters,
        "ranked_by": ("self CUDA time of device kernels" if on_gpu else
                      "self CPU time of aten ops (no CUDA device: a CPU profile)"),
        "total_self_ms_per_iter": round(total * per_iter / 1e3, 3),
        "top": [_row(e, per_iter, total, field) for e in kernels[:top]],
        "phases": [{"name": e.key, "calls_per_iter": round(e.count * per_iter, 2),
                    "cpu_ms_per_iter": round(e.cpu_time_total * per_iter / 1e3, 4),
                    "device_ms_per_iter": round(e.device_time_total * per_iter / 1e3, 4)} for e in phases],
    }
