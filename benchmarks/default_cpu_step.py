"""Where the default's CPU training time goes (issue #15): one joint iteration, and the loader.

More iterations in the 5-minute budget was the last lever for the default's two targets below
0.9, so this measures whether any speed knob buys them on a CPU: the step of ``params.yaml``'s
default with the sweep's loss weights from the committed ``tuned.yaml`` (a CelebA-like then a
RaFD-like batch, random uint8 images) with ``channels_last`` and ``fast_ops`` on and off, and the
default's own training stream over real shards. Prints one JSON line; the figures of 2026-12-04
are in ``benchmarks/results/default-cpu-step.json``.

    dvc repro shard          # the label layout and the loader come from data/shards
    python benchmarks/default_cpu_step.py [--rounds 2] [--iters 40]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch

from stargan.config import TrainConfig, load_config, resolve_tuned
from stargan.data.loader import make_loader, train_stream
from stargan.data.shard_source import verify
from stargan.training import v1_step
from stargan.training.labels import LabelLayout
from stargan.training.nets import build_v1

SETTINGS = {"default (contiguous, stock ops)": [], "channels_last": ["train.channels_last=true"],
            "channels_last + fast_ops": ["train.channels_last=true", "train.fast_ops=true"],
            "fast_ops": ["train.fast_ops=true"]}


def _batches(layout: LabelLayout, batch_size: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for d in layout.datasets:
        n = len(d.label_names)
        label = (torch.randint(0, 2, (batch_size, n), generator=g).float() if d.kind == "multi" else
                 torch.nn.functional.one_hot(torch.randint(0, n, (batch_size,), generator=g), n).float())
        out.append({"image": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=g),
                    "label": label})
    return out


def _mean_seconds(call: Callable[[int], object], iters: int, warmup: int) -> float:
    """Mean seconds of ``call(i)`` over ``iters`` calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        call(i)
    t0 = time.perf_counter()
    for i in range(iters):
        call(warmup + i)
    return (time.perf_counter() - t0) / iters


def step_seconds(cfg: TrainConfig, layout: LabelLayout, iters: int, warmup: int = 10) -> float:
    """Mean seconds of one joint iteration (every dataset's batch once) with ``cfg``."""
    torch.manual_seed(0)
    nets, optims = build_v1(cfg, layout, "cpu")
    gen = torch.Generator().manual_seed(0)
    batches = _batches(layout, cfg.batch_size, cfg.image_size)

    def iteration(step: int) -> None:
        for i, batch in enumerate(batches):
            v1_step.train_step(nets, optims, batch, cfg, step, layout, i, generator=gen)

    return _mean_seconds(iteration, iters, warmup)


def loader_seconds(cfg: TrainConfig, iters: int = 100) -> float:
    """Mean seconds to draw one batch of every dataset from the default's training streams."""
    streams = [iter(make_loader(train_stream(f"data/shards/{d}", cfg), 0)) for d in cfg.datasets]

    def draw(_: int) -> None:
        for s in streams:
            next(s)

    return _mean_seconds(draw, iters, warmup=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()
    # what `dvc repro` trains: params.yaml with the sweep's loss weights from tuned.yaml
    configs = {name: resolve_tuned(load_config("params.yaml", overrides), "tuned.yaml").train
               for name, overrides in SETTINGS.items()}
    default = configs[next(iter(SETTINGS))]
    manifests = [verify(f"data/shards/{name}") for name in default.datasets]
    layout = LabelLayout([(name, m["label_names"], m["label_kind"]) for name, m in zip(default.datasets, manifests)])
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):          # alternated, so a drift of the host's speed hits every setting
        for name, cfg in configs.items():
            times[name].append(round(step_seconds(cfg, layout, args.iters), 4))
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "s_per_iter": times,
                      "loader_s_per_iter": round(loader_seconds(default), 4)}))


if __name__ == "__main__":
    main()
