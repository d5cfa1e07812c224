"""Quality parity of the v1 fast path (``stargan bench parity``): train the same nets from the same
seed on the same real shards with each variant and log every step's losses to one CSV.

Why: the speed knobs change arithmetic (bf16 autocast, fused ops, compiled kernels, graph replay),
so step-for-step equality is not expected beyond the first iterations; what must hold is that the
training curves overlay. Every variant gets the same batches (the training stream is deterministic
in its seed), the same target permutations and GP weights (the same generator seed) and the same
initial weights; ``benchmarks/plot_parity.py`` draws the overlay from the CSV afterwards.

The JSON summary beside the CSV gives per variant the wall time, ms/iteration and the mean of each
loss over the first and the last tenth of the run, with the relative difference of the last-tenth
means from the first variant's.
"""
from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

COLUMNS = ["D/loss", "D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp", "D/grad_norm",
           "G/loss", "G/loss_fake", "G/loss_rec", "G/loss_cls", "G/grad_norm"]


def _run(name: str, shard_dir: Path, iters: int, image_size: int, batch_size: int, loader_workers: int,
         device: torch.device, log: Callable[[str], None]) -> tuple[list[dict], float]:
    """Per-step scalars of ``iters`` iterations of variant ``name`` and the wall seconds they took."""
    from stargan.bench.train import VARIANTS, _paper_cfg, _reset_backends
    from stargan.data.loader import make_loader, train_stream
    from stargan.data.shards import read_manifest
    from stargan.training import v1_step
    from stargan.training.labels import LabelLayout
    from stargan.training.nets import build_v1
    from stargan.training.v1_graph import V1GraphStep

    _reset_backends(device)
    cfg = _paper_cfg("v1", image_size, batch_size, VARIANTS[name])
    manifest = read_manifest(shard_dir)
    layout = LabelLayout([("celeba", manifest["label_names"], manifest["label_kind"])])
    nets, optims = build_v1(cfg, layout, device)
    gen = torch.Generator().manual_seed(7919)
    it = iter(make_loader(train_stream(shard_dir, cfg), loader_workers, pin_memory=device.type == "cuda"))
    rows: list[dict] = []
    t0 = time.perf_counter()
    if cfg.cuda_graphs:
        graph_step = V1GraphStep(nets, optims, cfg, layout, 0, generator=gen)
        for step in range(iters):
            graph_step.submit(next(it), step)
            if (step + 1) % cfg.v1.n_critic == 0 or step == iters - 1:
                rows += graph_step.collect()             # one host read per block of n_critic steps
    else:
        for step in range(iters):
            rows.append(v1_step.train_step(nets, optims, next(it), cfg, step, layout, 0, generator=gen))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    log(f"[bench parity] {name}: {iters} iterations in {wall:.1f} s")
    del it, nets, optims
    if cfg.compile or cfg.compile_blocks:
        torch._dynamo.reset()
    return rows, wall


def _window_means(rows: list[dict], lo: int, hi: int) -> dict[str, float]:
    out = {}
    for k in COLUMNS:
        vals = [r[k] for r in rows[lo:hi] if k in r]
        if vals:
            out[k] = round(statistics.fmean(vals), 5)
    return out


def v1_parity(shard_dir: Path, out_csv: Path, *, iters: int = 2000, variants: Sequence[str] = ("eager", "fast_graphs"),
              image_size: int = 128, batch_size: int = 16, loader_workers: int = 4, device: str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run every variant for ``iters`` iterations; write ``out_csv`` (one row per variant and step)
    and ``out_csv`` with a ``.json`` suffix (the summary, returned)."""
    from stargan.bench.train import VARIANTS, _environment

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tenth = max(1, iters // 10)
    summary: dict = {"benchmark": "v1 training-curve parity on real shards", "shards": str(shard_dir),
                     "iterations": iters, "image_size": image_size, "batch_size": batch_size,
                     "environment": _environment(dev), "variants": {}}
    with out_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "step"] + COLUMNS)
        for name in variants:
            log(f"[bench parity] {name} ...")
            rows, wall = _run(name, shard_dir, iters, image_size, batch_size, loader_workers, dev, log)
            for step, r in enumerate(rows):
                writer.writerow([name, step] + [repr(r[k]) if k in r else "" for k in COLUMNS])
            f.flush()
            summary["variants"][name] = {"knobs": VARIANTS[name], "wall_s": round(wall, 2),
                                         "ms_per_iter": round(1e3 * wall / iters, 3),
                                         "first_tenth_mean": _window_means(rows, 0, tenth),
                                         "last_tenth_mean": _window_means(rows, iters - tenth, iters)}
    names = list(summary["variants"])
    base = summary["variants"][names[0]]["last_tenth_mean"]
    for name in names[1:]:
        mine = summary["variants"][name]["last_tenth_mean"]
        summary["variants"][name]["last_tenth_rel_diff_vs_" + names[0]] = {
            k: round(abs(mine[k] - base[k]) / max(abs(base[k]), 1e-8), 4) for k in base if k in mine}
    out_csv.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
