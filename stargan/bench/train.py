"""GPU training-throughput benchmark: ``stargan bench train --model v1|v2``.

Measures our own training iteration (:func:`stargan.training.v1_step.train_step` /
:func:`stargan.training.v2_step.train_step`, optimizer steps, NaN checks, EMA and all) at the
papers' settings on random device-resident data, the way the official baselines in the issue
were measured (cuDNN autotuning on, cuDNN TF32 convolutions at torch's default), so that data
loading is out of the number. Several *variants* (sets of the opt-in ``train.*`` speed knobs)
run in one process, each on freshly built nets from the same seed:

- per variant: warm-up iterations (compilation, cuDNN autotuning), then the median time of
  blocks of iterations (v1: ``n_critic`` iterations per block, so every block holds exactly one
  G update; v2: one iteration), images/s = batch / median iteration time, peak GPU memory
  (allocated and reserved) over warm-up and timing, and achieved TFLOP/s;
- FLOPs per iteration are *counted* (:mod:`stargan.flops`, ``FlopCounterMode``) over one block
  of the plain fp32 eager path on the same device: the model's arithmetic (convolutions and
  matmuls, forward, backward and double backward), which every variant performs too;
- ``speedup`` of each variant over ``eager`` (plain fp32, NCHW, stock ops, no compile) is the
  figure to quote: both measured in the same run on the same machine.

Also in the same run, when asked: ``official`` (the official code's iteration on the same batches,
:mod:`stargan.bench.official`), real data instead of random tensors (``shards``:
:class:`stargan.bench.runners.ShardData`), and a kernel profile of every variant after its timing
(``profile_iters``: :mod:`stargan.bench.profile`).
"""
from __future__ import annotations

import gc
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from stargan.bench.runners import ShardData, v1_runner, v2_runner
from stargan.config import TrainConfig, V1Config, V2Config

# Knob sets, cumulative from plain fp32 eager to the full fast path.
VARIANTS: dict[str, dict[str, bool]] = {
    "eager": {},
    "tf32": {"tf32": True},
    "bf16": {"tf32": True, "amp_bf16": True},
    "bf16_cl": {"tf32": True, "amp_bf16": True, "channels_last": True},
    "bf16_cl_ops": {"tf32": True, "amp_bf16": True, "channels_last": True, "fast_ops": True},
    "fast": {"tf32": True, "amp_bf16": True, "channels_last": True, "fast_ops": True, "compile": True},
    # single levers off the full fast path, to see what each one still buys there
    "fast_no_compile": {"tf32": True, "amp_bf16": True, "channels_last": True, "fast_ops": True},
    "fast_fp32": {"tf32": True, "channels_last": True, "fast_ops": True, "compile": True},
    "fast_no_ops": {"tf32": True, "amp_bf16": True, "channels_last": True, "compile": True},
    # round two: v1 CUDA graphs of the whole D and G steps; v2 regional compilation
    "graphs": {"tf32": True, "amp_bf16": True, "channels_last": True, "fast_ops": True, "cuda_graphs": True},
    "fast_graphs": {"tf32": True, "amp_bf16": True, "channels_last": True, "fast_ops": True, "compile": True,
                    "cuda_graphs": True},
    "fp32_graphs": {"cuda_graphs": True},
    "blocks": {"tf32": True, "amp_bf16": True, "channels_last": True, "fast_ops": True, "compile_blocks": True},
    "fp32_blocks": {"compile_blocks": True},
}
#: Not a knob set: the official code's iteration (stargan/bench/official.py) on the same batches.
OFFICIAL_VARIANT = "official"

# Reported in the issue (official code, one H100, torch 2.11, cuDNN benchmark, fp32): not measured here.
OFFICIAL = {
    "v1": {"image_size": 128, "batch_size": 16, "ms_per_iter": 22.0, "images_per_s": 728.0,
           "note": "batch 64: 53.7 ms/iter, 1,191 img/s"},
    "v2": {"image_size": 256, "batch_size": 8, "ms_per_iter": 573.0, "images_per_s": 14.0},
}


def _paper_cfg(model: str, image_size: int, batch_size: int, knobs: dict[str, bool]) -> TrainConfig:
    # D's trunk halves the image d_repeat_num times: 6 at 128 px (paper); fewer for smoke tests.
    v1 = V1Config(d_repeat_num=min(6, image_size.bit_length() - 1))
    cfg = TrainConfig(model=model, image_size=image_size, batch_size=batch_size, num_iters=200000, seed=0,
                      v1=v1, v2=V2Config())
    return replace(cfg, **knobs)


def _reset_backends(device: torch.device) -> None:
    """Torch's defaults plus cuDNN autotuning (as the official baselines ran), before each variant."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device_type": device.type,
           "host": platform.node()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update({"device": torch.cuda.get_device_name(device), "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                    "sm_count": p.multi_processor_count, "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version()})
    else:
        env["device"] = platform.processor() or "cpu"
    return env


def run_variant(model: str, name: str, knobs: dict[str, bool], *, image_size: int, batch_size: int,
                iters: int, warmup: int, device: torch.device, count_flops: bool = False,
                data: ShardData | None = None, profile_iters: int = 0, official_src: Path | None = None) -> dict:
    """Build, warm up and time one variant; optionally count the FLOPs of one block (eager only) and
    profile ``profile_iters`` more iterations (rounded up to whole blocks)."""
    from stargan.flops import count_flops as _count

    _reset_backends(device)
    cfg = _paper_cfg(model, image_size, batch_size, knobs)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    if name == OFFICIAL_VARIANT:
        from stargan.bench import official

        if data is not None:
            raise ValueError("the official variant runs on random device-resident batches only (no --shards)")
        step, block = official.runner(model, cfg, device, official_src or official.DEFAULT_SRC)
    else:
        step, block = (v1_runner if model == "v1" else v2_runner)(cfg, device, data)
    first = step(0)
    i = 1
    while i < max(warmup, 2 * block):
        step(i)
        i += 1
    _sync(device)
    warmup_s = time.perf_counter() - t0
    out: dict = {"knobs": knobs, "warmup_iters": i, "warmup_s": round(warmup_s, 2), "first_step": first}
    if count_flops:
        start = i - i % block + block        # a whole block aligned on the G step
        while i < start:
            step(i)
            i += 1
        flops = _count(lambda: [step(j) for j in range(start, start + block)])
        i = start + block
        out["flops_per_iter"] = flops / block
    n_blocks = max(1, iters // block)
    times = []
    i = i - i % block + block if i % block else i
    last: dict = {}
    for _ in range(n_blocks):
        _sync(device)
        t = time.perf_counter()
        for _ in range(block):
            last = step(i) or last
            i += 1
        _sync(device)
        times.append((time.perf_counter() - t) / block)
    ms = 1e3 * statistics.median(times)
    out.update({"last_step": last, "timed_iters": n_blocks * block, "ms_per_iter": round(ms, 3),
                "ms_per_iter_p10": round(1e3 * sorted(times)[len(times) // 10], 3),
                "ms_per_iter_p90": round(1e3 * sorted(times)[(9 * len(times)) // 10], 3),
                "images_per_s": round(batch_size / (ms / 1e3), 1)})
    if device.type == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    if profile_iters:
        from stargan.bench.profile import profile_iterations

        out["profile"] = profile_iterations(step, i, -(-profile_iters // block) * block, device)
    del step
    gc.collect()
    if knobs.get("compile") or knobs.get("compile_blocks"):
        torch._dynamo.reset()
    return out


def bench_train(model: str, *, image_size: int | None = None, batch_size: int | None = None, iters: int | None = None,
                warmup: int | None = None, variants: Sequence[str] = ("eager", "fast"),
                device: str | None = None, out: Path | None = None, log: Callable[[str], None] = print,
                data: ShardData | None = None, profile_iters: int = 0, official_src: Path | None = None,
                profile_out: Path | None = None) -> dict:
    """Time ``variants`` (names of :data:`VARIANTS`, or ``official``) of ``model`` in this process.

    ``data``: real shards instead of random device-resident batches; ``profile_iters``: profile that
    many iterations of every variant after its timing, the tables also written to ``profile_out``."""
    if model not in ("v1", "v2"):
        raise ValueError(f"model {model!r}; expected v1 or v2")
    unknown = [v for v in variants if v not in VARIANTS and v != OFFICIAL_VARIANT]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS) + [OFFICIAL_VARIANT]}")
    if OFFICIAL_VARIANT in variants:            # fail before anything is timed, naming fetch.sh
        from stargan.bench.official import DEFAULT_SRC, require

        require(official_src or DEFAULT_SRC, model)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size = image_size or (128 if model == "v1" else 256)
    batch_size = batch_size or (16 if model == "v1" else 8)
    iters = iters or (200 if model == "v1" else 30)
    warmup = warmup if warmup is not None else (30 if model == "v1" else 6)
    from stargan.flops import v1_forward_gflops, v2_forward_gflops

    result: dict = {
        "benchmark": ("train_step throughput on random device-resident data" if data is None else
                      "train_step throughput with data included: " + data.describe()),
        "model": model, "image_size": image_size, "batch_size": batch_size,
        "settings": ("v1: CelebA 5 attributes, conv_dim 64, G repeat 6, D repeat 6, n_critic 5, λ_gp 10"
                     if model == "v1" else "v2: 3 domains, w_hpf 0, style 64, latent 16, max_conv_dim 512, "
                                           "R1 λ 1, EMA 0.999"),
        "environment": _environment(dev),
        "forward_gflops_per_image": (v1_forward_gflops(image_size, d_repeat_num=min(6, image_size.bit_length() - 1)) if model == "v1"
                                     else v2_forward_gflops(image_size)),
        "official_reported": OFFICIAL[model] if image_size == OFFICIAL[model]["image_size"]
        and batch_size == OFFICIAL[model]["batch_size"] else None,
        "variants": {},
    }
    order = list(variants)
    if "eager" in order:                      # eager first: it also counts the FLOPs
        order.remove("eager")
        order.insert(0, "eager")
    flops = None
    for name in order:
        log(f"[bench train] {model} {name} ...")
        try:
            r = run_variant(model, name, VARIANTS.get(name, {}), image_size=image_size, batch_size=batch_size,
                            iters=iters, warmup=warmup, device=dev, count_flops=flops is None and name == "eager",
                            data=data, profile_iters=profile_iters, official_src=official_src)
        except Exception as e:  # noqa: BLE001 - record the failure, keep measuring the other variants
            result.setdefault("failed", {})[name] = f"{type(e).__name__}: {e}"[:2000]
            log(f"[bench train] {model} {name} FAILED: {type(e).__name__}: {str(e)[:500]}")
            gc.collect()
            torch._dynamo.reset()
            continue
        flops = r.get("flops_per_iter", flops)
        result["variants"][name] = r
        log(f"[bench train] {model} {name}: {r['ms_per_iter']:.2f} ms/iter, {r['images_per_s']:.1f} img/s, "
            f"peak {r.get('peak_allocated_gib', float('nan'))} GiB, warm-up {r['warmup_s']} s")
        if out is not None:                    # partial results survive a timeout
            _write(out, result)
        if profile_out is not None and "profile" in r:
            _write_profile(profile_out, result, name, r.pop("profile"))
    if flops is None:                          # no eager variant: count a block of it anyway
        r = run_variant(model, "eager", {}, image_size=image_size, batch_size=batch_size, iters=1, warmup=1,
                        device=dev, count_flops=True, data=data)
        flops = r["flops_per_iter"]
    result["flops_per_iter"] = flops
    result["flops_note"] = ("counted with torch.utils.flop_counter.FlopCounterMode over one block of the fp32 eager "
                            "iteration (convs/matmuls incl. backward and double backward; elementwise not counted)")
    if OFFICIAL_VARIANT in result["variants"]:
        result["official_note"] = ("official: the official code's iteration (stargan/bench/official.py); its TFLOP/s "
                                   "uses the FLOPs counted on our eager iteration (the same model arithmetic; the "
                                   "official v2 also computes weight gradients of nets it does not update, not "
                                   "counted)")
    for r in result["variants"].values():
        r["achieved_tflops"] = round(flops / (r["ms_per_iter"] / 1e3) / 1e12, 1)
    if "eager" in result["variants"]:
        base = result["variants"]["eager"]["ms_per_iter"]
        for r in result["variants"].values():
            r["speedup_vs_eager"] = round(base / r["ms_per_iter"], 2)
    off = result["official_reported"]
    if off:
        for r in result["variants"].values():
            r["speedup_vs_official_reported"] = round(off["ms_per_iter"] / r["ms_per_iter"], 2)
    if out is not None:
        _write(out, result)
    return result


def _write_profile(path: Path, result: dict, name: str, table: dict) -> None:
    """Add one variant's kernel table to the profile file (which names the run and the device)."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    if doc.get("model") != result["model"] or doc.get("environment") != result["environment"]:
        doc = {k: result[k] for k in ("model", "image_size", "batch_size", "settings", "environment", "benchmark")}
        doc["variants"] = {}
    doc["variants"][name] = table
    _write(path, doc)


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def table(result: dict) -> str:
    """A short text table of one result (printed last by the CLI)."""
    rows = [f"{result['model']} {result['image_size']}px batch {result['batch_size']} on "
            f"{result['environment'].get('device')} (torch {result['environment']['torch']}, "
            f"cuDNN {result['environment'].get('cudnn')})",
            f"{'variant':<16}{'ms/iter':>10}{'img/s':>10}{'TFLOP/s':>9}{'peak GiB':>10}{'x eager':>9}"]
    for name, r in result["variants"].items():
        rows.append(f"{name:<16}{r['ms_per_iter']:>10.2f}{r['images_per_s']:>10.1f}{r.get('achieved_tflops', 0):>9.1f}"
                    f"{r.get('peak_allocated_gib', float('nan')):>10.2f}{r.get('speedup_vs_eager', float('nan')):>9.2f}")
    return "\n".join(rows)
