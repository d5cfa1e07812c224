"""StarGAN v2 behind the worker loop's :class:`~stargan.training.worker.Trainer` interface:
domains from the shards' manifest, nets + EMA copies, the balanced stream, state, grids."""
from __future__ import annotations

import numpy as np
import torch

from stargan.config import Config
from stargan.data.loader import make_loader, train_stream
from stargan.training.nets import build_v2
from stargan.training import v2_step
from stargan.training.checkpoint import CheckpointError, TrainState, capture_rng, restore_rng
from stargan.training.init_from import load_net, load_optimizer
from stargan.training.distributed import broadcast_module, make_sync_grads
from stargan.training.v1_trainer import SAMPLE_ROWS, fixed_inputs
from stargan.storage import join
from stargan.visualize import grid

LATENT_STYLES = 2   # styles per target domain in the sample grid


class V2Trainer:
    def __init__(self, cfg: Config, ctx):
        t = cfg.train
        self.cfg, self.ctx = cfg, ctx
        self.dir = join(ctx.shard_root, t.datasets[0])
        self.stream = train_stream(self.dir, t, rank=ctx.rank, world_size=ctx.world_size)
        self.domains = self.stream.domains
        self.nets, self.optims = build_v2(t, self.domains.num_domains, ctx.device)
        for name in ("G", "F", "E", "D", "G_ema", "F_ema", "E_ema"):
            broadcast_module(getattr(self.nets, name))
        self.sync = make_sync_grads()
        self.gen = torch.Generator(device="cpu").manual_seed(t.seed * 7919 + ctx.rank)
        self.images_per_step = t.batch_size
        self._iter = None
        self._fixed = None

    def train_step(self, step: int) -> dict[str, float]:
        if self._iter is None:
            self.stream.start_batch = step
            self._iter = iter(make_loader(self.stream, self.cfg.train.loader_workers,
                                          pin_memory=self.ctx.device.type == "cuda"))
        return v2_step.train_step(self.nets, self.optims, next(self._iter), self.cfg.train, step, self.sync, self.gen)

    def _modules(self) -> dict:
        """Every net under a distinct checkpoint key: G, F, E, D and G_ema, F_ema, E_ema."""
        return self.nets.trained() | {f"{k}_ema": m for k, m in self.nets.ema().items()}

    def state(self, step: int) -> TrainState:
        nets = {k: m.state_dict() for k, m in self._modules().items()}
        return TrainState(step=step, model="v2", config=self.cfg.to_dict(), nets=nets,
                          optims={k: getattr(self.optims, k).state_dict() for k in ("G", "F", "E", "D")},
                          rng=capture_rng({"step": self.gen}),
                          extra={"domains": list(self.domains.names), "dataset": self.cfg.train.datasets[0],
                                 "label_names": list(self.stream.manifest["label_names"]),
                                 "label_kind": self.stream.manifest["label_kind"]})

    def load(self, state: TrainState) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state.nets[k])
        for k in ("G", "F", "E", "D"):
            getattr(self.optims, k).load_state_dict(state.optims[k])
        restore_rng({"step": self.gen}, state.rng)

    def init(self, state: TrainState) -> list[str]:
        """Start from ``train.init_from`` (:mod:`stargan.training.init_from`); returns what came from
        the file and what starts fresh, for the run's log."""
        path = self.cfg.train.init_from
        theirs = list(state.extra.get("domains") or state.extra.get("label_names") or [])
        if len(theirs) != self.domains.num_domains:
            raise CheckpointError(f"train.init_from: {path}: its networks have {len(theirs)} domains "
                                  f"({', '.join(theirs)}), the training data {self.domains.num_domains} "
                                  f"({', '.join(self.domains.names)}); train on as many domains in the same order "
                                  "(train.v2.domains picks and orders them)")
        loaded, fresh = [], []
        for k in ("G", "F", "E"):
            ema = state.nets[f"{k}_ema"]
            load_net(getattr(self.nets, f"{k}_ema"), ema, f"{k}_ema", path)
            load_net(getattr(self.nets, k), state.nets.get(k, ema), k, path)
            loaded.append(f"{k}_ema")
            loaded.append(k if k in state.nets else f"{k} (= {k}_ema)")
        if "D" in state.nets:
            load_net(self.nets.D, state.nets["D"], "D", path)
            loaded.append("D")
        else:
            fresh.append("D")
        for k in ("G", "F", "E", "D"):
            if k in state.optims:
                load_optimizer(getattr(self.optims, k), state.optims[k], k, path)
                loaded.append(f"optimizer {k}")
            else:
                fresh.append(f"optimizer {k}")
        pairs = ", ".join(f"{a} -> {b}" for a, b in zip(theirs, self.domains.names))
        return [f"from the checkpoint: {', '.join(loaded)}", f"fresh: {', '.join(fresh) or 'nothing'}",
                f"domains (checkpoint -> data): {pairs}"]

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Rows: fixed inputs. Columns: input | latent styles per domain (fixed z) | reference-guided
        with the first inputs as references (EMA nets, as evaluated and exported)."""
        dev = self.ctx.device
        if self._fixed is None:
            batch = fixed_inputs(self.dir, self.cfg.train.image_size, SAMPLE_ROWS)
            g = torch.Generator(device="cpu").manual_seed(1234)
            z = torch.randn(LATENT_STYLES, self.cfg.train.v2.latent_dim, generator=g)
            refs = batch["image"][: min(3, batch["image"].size(0))]
            ref_dom = torch.tensor([max(self.domains.domain_of([int(v) for v in lab]), 0)
                                    for lab in batch["label"][: refs.size(0)]])
            self._fixed = (batch["image"], z, refs, ref_dom)
        x, z, refs, ref_dom = (t.to(dev) for t in self._fixed)
        cols = [x]
        for d in range(self.domains.num_domains):
            y = torch.full((x.size(0),), d, dtype=torch.int64, device=dev)
            for j in range(z.size(0)):
                cols.append(v2_step.translate_latent(self.nets, x, y, z[j:j + 1].expand(x.size(0), -1)))
        for r in range(refs.size(0)):
            cols.append(v2_step.translate_reference(self.nets, x, refs[r:r + 1].expand_as(x),
                                                    ref_dom[r:r + 1].expand(x.size(0))))
        return grid([torch.stack([c[i] for c in cols]) for i in range(x.size(0))])
