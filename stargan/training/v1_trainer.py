"""StarGAN (v1) behind the worker loop's :class:`~stargan.training.worker.Trainer` interface:
label layout from the shards' manifests, nets, one stream per dataset, checkpoint state, grids.

Joint training (several datasets) follows the paper: every iteration takes one batch of each
dataset in turn, labels extended with the mask vector. Stream ``start_batch`` equals the step, so
a resumed run reads exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import numpy as np
import torch

from stargan.config import Config
from stargan.data.loader import iter_split, make_loader, train_stream
from stargan.data.shard_source import verify
from stargan.data.shards import split_entries
from stargan.training import v1_step
from stargan.training.v1_graph import V1GraphStep, load_optimizer_state, optimizer_state
from stargan.training.nets import build_v1
from stargan.training.checkpoint import CheckpointError, TrainState, capture_rng, restore_rng
from stargan.training.init_from import load_net, load_optimizer
from stargan.training.distributed import broadcast_module, make_sync_grads
from stargan.training.labels import LabelLayout
from stargan.storage import join
from stargan.visualize import grid

SAMPLE_ROWS = 4     # fixed validation inputs per dataset in the sample grids


def fixed_inputs(shard_dir, image_size: int, n: int) -> dict:
    """The first ``n`` held-out images (val, else test, else train) in a stable order."""
    manifest = verify(shard_dir)
    for split in ("val", "test", "train"):
        if split_entries(manifest, split):
            return next(iter_split(shard_dir, split, n, image_size))
    raise FileNotFoundError(f"{shard_dir}: no split to draw sample inputs from")


class V1Trainer:
    def __init__(self, cfg: Config, ctx):
        t = cfg.train
        self.cfg, self.ctx = cfg, ctx
        self.dirs = [join(ctx.shard_root, name) for name in t.datasets]
        manifests = [verify(d) for d in self.dirs]
        self.layout = LabelLayout([(name, m["label_names"], m["label_kind"]) for name, m in zip(t.datasets, manifests)])
        self.nets, self.optims = build_v1(t, self.layout, ctx.device)
        broadcast_module(self.nets.G)
        broadcast_module(self.nets.D)
        self.sync = make_sync_grads()
        # Per-rank randomness of the step (target permutations, GP interpolation).
        self.gen = torch.Generator(device="cpu").manual_seed(t.seed * 7919 + ctx.rank)
        self.images_per_step = t.batch_size * len(self.dirs)
        # train.cuda_graphs: one static-buffer step per dataset (its own buffers and graphs, shared nets)
        self.graph_steps = [V1GraphStep(self.nets, self.optims, t, self.layout, i, generator=self.gen,
                                        sync_grads=self.sync) for i in range(len(self.dirs))] if t.cuda_graphs else None
        self._iters = None
        self._fixed = None

    def _open_streams(self, start: int) -> None:
        t = self.cfg.train
        self._iters = [iter(make_loader(train_stream(d, t, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                                     start_batch=start), t.loader_workers,
                                       pin_memory=self.ctx.device.type == "cuda")) for d in self.dirs]

    def train_step(self, step: int) -> dict[str, float]:
        if self._iters is None:
            self._open_streams(step)
        out: dict[str, list[float]] = {}
        for i, it in enumerate(self._iters):
            if self.graph_steps is not None:
                scalars = self.graph_steps[i](next(it), step)
            else:
                scalars = v1_step.train_step(self.nets, self.optims, next(it), self.cfg.train, step, self.layout, i,
                                             self.sync, self.gen)
            for k, v in scalars.items():
                out.setdefault(k, []).append(v)
                if self.layout.joint and "cls" in k:
                    out.setdefault(f"{k}/{self.layout.datasets[i].name}", []).append(v)
        return {k: float(np.mean(v)) for k, v in out.items()}

    def state(self, step: int) -> TrainState:
        nets = {"G": self.nets.G.state_dict(), "D": self.nets.D.state_dict()}
        if self.nets.G_ema is not None:
            nets["G_ema"] = self.nets.G_ema.state_dict()
        return TrainState(step=step, model="v1", config=self.cfg.to_dict(), nets=nets,
                          optims={"g": optimizer_state(self.optims.g), "d": optimizer_state(self.optims.d)},
                          rng=capture_rng({"step": self.gen}), extra={"layout": self.layout.to_dict()})

    def load(self, state: TrainState) -> None:
        self.nets.G.load_state_dict(state.nets["G"])
        self.nets.D.load_state_dict(state.nets["D"])
        if self.nets.G_ema is not None:   # a run that turned the EMA on at resume starts it from G
            self.nets.G_ema.load_state_dict(state.nets.get("G_ema", state.nets["G"]))
        load_optimizer_state(self.optims.g, state.optims["g"])
        load_optimizer_state(self.optims.d, state.optims["d"])
        restore_rng({"step": self.gen}, state.rng)

    def init(self, state: TrainState) -> list[str]:
        """Start from ``train.init_from`` (:mod:`stargan.training.init_from`); returns what came from
        the file and what starts fresh, for the run's log."""
        path = self.cfg.train.init_from
        theirs = LabelLayout.from_dict(state.extra["layout"])
        if (theirs.c_dim, theirs.cls_dim) != (self.layout.c_dim, self.layout.cls_dim):
            raise CheckpointError(f"train.init_from: {path}: its labels ({', '.join(theirs.all_target_names())}) "
                                  f"do not fit the training data's ({', '.join(self.layout.all_target_names())}): "
                                  f"label size {theirs.c_dim} vs {self.layout.c_dim}; train on as many labels in the "
                                  "same order (data.datasets.<name>.attributes)")
        load_net(self.nets.G, state.nets["G"], "G", path)
        loaded, fresh = ["G"], []
        if self.nets.G_ema is not None:
            load_net(self.nets.G_ema, state.nets.get("G_ema", state.nets["G"]), "G_ema", path)
            loaded.append("G_ema" if "G_ema" in state.nets else "G_ema (= G)")
        if "D" in state.nets:
            load_net(self.nets.D, state.nets["D"], "D", path)
            loaded.append("D")
        else:
            fresh.append("D")
        for k, opt in (("g", self.optims.g), ("d", self.optims.d)):
            if k in state.optims:
                load_optimizer(opt, state.optims[k], k.upper(), path)
                loaded.append(f"optimizer {k.upper()}")
            else:
                fresh.append(f"optimizer {k.upper()}")
        return [f"from the checkpoint: {', '.join(loaded)}", f"fresh: {', '.join(fresh) or 'nothing'}"]

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Fixed inputs of every dataset x every target of every dataset."""
        if self._fixed is None:
            self._fixed = [fixed_inputs(d, self.cfg.train.image_size, SAMPLE_ROWS) for d in self.dirs]
        rows = []
        for i, batch in enumerate(self._fixed):
            x = batch["image"].to(self.ctx.device)
            strip, _ = v1_step.translation_grid(self.nets.G_eval, x, self.layout, i, batch["label"])
            n_cols = strip.size(3) // x.size(3)
            for r in range(x.size(0)):
                rows.append(torch.stack(strip[r].chunk(n_cols, dim=2)))
        return grid(rows)
