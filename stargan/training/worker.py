"""The training loop every worker runs, independent of Ray, MLflow and DVC.

It owns the order of things — resume, step, log, sample, checkpoint — and nothing else. The
model-specific work sits behind :class:`Trainer` (``v1_trainer.py``, ``v2_trainer.py``); how a
checkpoint is stored and where logs go sits behind :class:`Hooks` (Ray Train in ``ray_train.py``,
plain files in ``local.py``). So the same loop runs in a test, on one GPU box without Ray, and on a
Ray cluster.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from stargan.config import TUNED, Config, ConfigError, tuned_keys
from stargan.progress import Progress
from stargan.training.checkpoint import TrainState, check_compatible
from stargan.training.distributed import all_reduce_mean, gather_rng, own_rng
from stargan.training.errors import NonFiniteLossError
from stargan.training.init_from import load_init_state


class Trainer(Protocol):
    images_per_step: int

    def train_step(self, step: int) -> dict[str, float]: ...
    def state(self, step: int) -> TrainState: ...
    def load(self, state: TrainState) -> None: ...
    def init(self, state: TrainState) -> list[str]: ...
    def sample_grid(self) -> np.ndarray: ...


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    shard_root: Path | str           # data/shards (absolute), or shard.uri (stargan/data/shard_source.py)
    log_path: Path | None = None     # rank 0's JSON-lines loss history
    extra: dict[str, Any] = field(default_factory=dict)   # stored in every checkpoint (e.g. mlflow run id)
    progress: bool = True            # rank 0 prints a progress line every few seconds (off in sweep trials)


class Hooks(Protocol):
    def resume(self) -> TrainState | None: ...
    def report(self, metrics: dict[str, float], state: TrainState | None) -> None: ...


@dataclass
class LoopResult:
    step: int
    status: str                       # "finished" | "nonfinite"
    metrics: dict[str, float]
    message: str = ""


def build_trainer(cfg: Config, ctx: WorkerContext) -> Trainer:
    if cfg.train.model == "v1":
        from stargan.training.v1_trainer import V1Trainer
        return V1Trainer(cfg, ctx)
    from stargan.training.v2_trainer import V2Trainer
    return V2Trainer(cfg, ctx)


def _truncate_log(path: Path | None, last_step: int) -> None:
    """After a restart, drop history lines of steps that will be replayed (no duplicates)."""
    if path is None or not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


def run_worker(cfg: Config, ctx: WorkerContext, hooks: Hooks, logger=None) -> LoopResult:
    """Train from the last checkpoint (if any) to ``train.num_iters``.

    ``logger`` (rank 0 only) is a :class:`stargan.tracking.RunLogger`; its metrics are flushed
    at checkpoints so a restarted worker never logs a step twice.
    """
    t = cfg.train
    if tuned_keys(cfg):
        raise ConfigError(f"{', '.join(tuned_keys(cfg))}: still '{TUNED}' in the training config; the entry point "
                          "must resolve it from tuned.yaml first (stargan.config.resolve_tuned)")
    trainer = build_trainer(cfg, ctx)
    start = 0
    state = hooks.resume()
    if state is not None:
        check_compatible(state, cfg.to_dict())
        state.rng = own_rng(state.rng, ctx.rank)
        trainer.load(state)
        start = state.step
        if ctx.rank == 0:
            print(f"[stargan] resuming from the checkpoint at step {start}", flush=True)
    elif t.init_from:
        said = trainer.init(load_init_state(cfg))
        if ctx.rank == 0:
            print(f"[stargan] starting from train.init_from={t.init_from} at step 0: {'; '.join(said)}", flush=True)
    if ctx.rank == 0:
        _truncate_log(ctx.log_path, start)

    window: dict[str, list[float]] = defaultdict(list)
    last: dict[str, float] = {}
    tick, tick_step = time.perf_counter(), start
    progress = Progress("[train] step", t.num_iters, "steps", every_s=5.0, enabled=ctx.rank == 0 and ctx.progress)
    for step in range(start, t.num_iters):
        try:
            scalars = trainer.train_step(step)
        except NonFiniteLossError as e:
            # Weights were not updated with the bad gradients; the last checkpoint stays the
            # last good one. Return instead of raising so Ray does not replay the same NaN; the
            # caller reports it (stargan.training.ray_train._worker_entry sends the message).
            msg = (f"{e}. Training stopped at step {step}; the last good checkpoint is kept. Lower the "
                   "learning rates or λ weights, check the input data, or disable train.amp_bf16")
            return LoopResult(step=step, status="nonfinite", metrics=last, message=msg)
        for k, v in scalars.items():
            window[k].append(v)
        done = step + 1
        if done % t.log_every == 0 or done == t.num_iters:
            elapsed = time.perf_counter() - tick
            avg = {k: float(np.mean(v)) for k, v in window.items()}
            avg = all_reduce_mean(avg, ctx.device)
            avg["perf/images_per_s"] = trainer.images_per_step * ctx.world_size * (done - tick_step) / max(elapsed, 1e-9)
            avg["perf/s_per_iter"] = elapsed / max(done - tick_step, 1)
            window.clear()
            tick, tick_step = time.perf_counter(), done
            last = avg
            if ctx.rank == 0 and logger is not None:
                logger.log_metrics(avg, done)
        progress.update(done, ", ".join(f"{k} {last[k]:.3f}" for k in ("D/loss", "G/loss") if k in last))
        if ctx.rank == 0 and logger is not None and (done % t.sample_every == 0 or done == t.num_iters):
            logger.log_image(trainer.sample_grid(), f"samples/{done:06d}.png")
        if done % t.checkpoint_every == 0 or done == t.num_iters:
            st = trainer.state(done)
            st.rng = gather_rng(st.rng)          # each rank resumes its own random stream
            st.extra.update(ctx.extra)
            hooks.report({"step": float(done), **last}, st)
            if ctx.rank == 0 and logger is not None:
                logger.flush()
    return LoopResult(step=t.num_iters, status="finished", metrics=last)
