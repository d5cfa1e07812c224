"""What ``stargan bench train`` times: one function per iteration, built for a model, a set of knobs
and a data source.

- random data (the default): a few random batches made once on the device and cycled, so loading
  is out of the number (the way the official baselines in the issue were measured);
- ``--shards DIR``: the training stream of real JPEG shards (:func:`stargan.data.loader.train_stream`,
  uint8 batches, pinned on CUDA) through a ``DataLoader`` with ``loader_workers`` processes, exactly
  as training reads them: the data-included figure.

With ``train.cuda_graphs`` (v1) the iteration is :class:`stargan.training.v1_graph.V1GraphStep`:
its losses stay on the device and are read (and NaN-checked) once per block of ``n_critic``
iterations, so the host never waits inside a block.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from stargan.config import TrainConfig

CELEBA_ATTRS = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
V2_DOMAINS = ["Black_Hair", "Blond_Hair", "Brown_Hair"]

#: ``step(i)`` runs iteration ``i`` (it may leave work queued on the device); ``block``: iterations
#: per timed block (v1: ``n_critic``, so a block holds exactly one G update).
Runner = tuple[Callable[[int], dict], int]


@dataclass(frozen=True)
class ShardData:
    """Real shards as the data source: a shard folder (``manifest.json`` + parquet) and loader workers."""
    shard_dir: Path
    loader_workers: int = 4
    domains: tuple[str, ...] = tuple(V2_DOMAINS)     # v2: the domains of the balanced stream

    def describe(self) -> str:
        return f"JPEG shards {self.shard_dir} through the training loader ({self.loader_workers} workers)"


def random_v1_batches(cfg: TrainConfig, device: torch.device, n_batches: int = 4, c: int = len(CELEBA_ATTRS)
                      ) -> list[dict]:
    """Seeded random v1 batches on ``device``: images in [-1, 1], binary labels of ``c`` attributes."""
    g = torch.Generator().manual_seed(123)
    size, b = cfg.image_size, cfg.batch_size
    return [{"image": (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(device),
             "label": torch.randint(0, 2, (b, c), generator=g).float().to(device)} for _ in range(n_batches)]


def random_v2_batches(cfg: TrainConfig, device: torch.device, num_domains: int = 3, n_batches: int = 4) -> list[dict]:
    """Seeded random v2 batches ``x_src, y_src, x_ref, x_ref2, y_ref`` on ``device``."""
    g = torch.Generator().manual_seed(123)
    size, b = cfg.image_size, cfg.batch_size

    def img() -> torch.Tensor:
        return (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(device)

    batches = []
    for _ in range(n_batches):
        y_ref = torch.randint(0, num_domains, (b,), generator=g).to(device)
        batches.append({"x_src": img(), "y_src": torch.randint(0, num_domains, (b,), generator=g).to(device),
                        "x_ref": img(), "x_ref2": img(), "y_ref": y_ref})
    return batches


def _shard_batches(data: ShardData, cfg: TrainConfig, device: torch.device) -> Callable[[int], dict]:
    """``batch(i)``: the next batch of the training stream (``i`` is only the iteration count)."""
    from stargan.data.loader import make_loader, train_stream

    stream = train_stream(data.shard_dir, cfg)
    it = iter(make_loader(stream, data.loader_workers, pin_memory=device.type == "cuda"))
    return lambda i: next(it)


def v1_runner(cfg: TrainConfig, device: torch.device, data: ShardData | None = None) -> Runner:
    from stargan.training import v1_step
    from stargan.training.labels import LabelLayout
    from stargan.training.nets import build_v1

    if data is None:
        layout = LabelLayout([("celeba", CELEBA_ATTRS, "multi")])
        batches = random_v1_batches(cfg, device)

        def batch(i: int) -> dict:
            return batches[i % len(batches)]
    else:
        from stargan.data.shards import read_manifest

        manifest = read_manifest(data.shard_dir)
        layout = LabelLayout([("celeba", manifest["label_names"], manifest["label_kind"])])
        batch = _shard_batches(data, cfg, device)
    nets, optims = build_v1(cfg, layout, device)
    gen = torch.Generator().manual_seed(7919)
    block = cfg.v1.n_critic
    if cfg.cuda_graphs:
        from stargan.training.v1_graph import V1GraphStep

        graph_step = V1GraphStep(nets, optims, cfg, layout, 0, generator=gen)

        def step(i: int) -> dict:
            graph_step.submit(batch(i), i)
            if i == 0 or (i + 1) % block == 0:            # one host read (and NaN check) per block
                return graph_step.collect()[-1] | {"captured": len(graph_step.captured)}
            return {}

        return step, block

    def eager_step(i: int) -> dict:
        return v1_step.train_step(nets, optims, batch(i), cfg, i, layout, 0, generator=gen)

    return eager_step, block


def v2_runner(cfg: TrainConfig, device: torch.device, data: ShardData | None = None, num_domains: int = 3) -> Runner:
    from stargan.training import v2_step
    from stargan.training.nets import build_v2

    if data is None:
        batches = random_v2_batches(cfg, device, num_domains)

        def batch(i: int) -> dict:
            return batches[i % len(batches)]
    else:
        from dataclasses import replace

        cfg = replace(cfg, v2=replace(cfg.v2, domains=list(data.domains)))
        num_domains = len(data.domains) if len(data.domains) > 1 else 2
        batch = _shard_batches(data, cfg, device)
    nets, optims = build_v2(cfg, num_domains, device)
    gen = torch.Generator().manual_seed(7919)

    def step(i: int) -> dict:
        return v2_step.train_step(nets, optims, batch(i), cfg, i, generator=gen)

    return step, 1
