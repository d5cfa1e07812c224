"""The StarGAN (v1) iteration from static buffers, captured as CUDA graphs (``train.cuda_graphs``).

Why: at the paper's 128 px, batch 16, the eager iteration is host-bound on an H100 (about 1,000
kernel launches per iteration and two host syncs per step for the NaN guard; bf16 did not make it
faster, compiling G did). A CUDA graph replays a whole phase with one launch, so the host's cost
per iteration no longer grows with the number of kernels.

One iteration (:meth:`V1GraphStep.submit`):

1. host: the target permutation and the GP weights α are drawn from the step's generator in the
   eager step's order (so both paths consume the same randomness); the LRs come from the schedule.
   The batch, the permutation and α are copied into static device buffers (asynchronous copies)
   and the LR tensors refilled when the schedule moved.
2. device, the D phase: labels → targets → model labels, :func:`~stargan.training.v1_step.d_phase`
   (the GP's double backward included), backward, ``sync_grads``, D's gradient norm, a finite flag
   over the losses and the norm, fused Adam with that flag as ``found_inf``.
3. device, the G phase (every ``n_critic``-th step): :func:`~stargan.training.v1_step.g_phase` with
   D frozen, backward, ``sync_grads``, the same guard, fused Adam, then ``G_ema`` when kept.
4. the named scalars stay on the device; :meth:`V1GraphStep.collect` reads every pending step
   in one host sync (``__call__`` does it for every step, as the training loop needs).

**A non-finite step updates no weights.** As with AMP's GradScaler, fused Adam skips a step whose
``found_inf`` is set: parameters, moments and step count stay as they were. G's flag also carries
this iteration's D flag, so a bad iteration leaves G and D exactly as before it (``G_ema``, kept
only with ``train.v1.ema_beta > 0``, still takes its usual step towards the unchanged G).
:meth:`collect` then raises :class:`~stargan.training.errors.NonFiniteLossError` naming the first
bad step and term, which the worker loop turns into "stopped at step N, last good checkpoint
kept", as for the eager step. With several steps submitted before a collect (the benchmark), the
steps after a bad one still run (each skipped if itself bad) until the collect raises.

**Where it is captured.** On one CUDA device: each phase runs ``warmup`` times eagerly on a side
stream (cuDNN autotuning, Adam's state, compilation), is then captured once and replayed from
there on. Elsewhere — a CPU device, or several workers, whose gradient all-reduce is not captured
here — the same code runs uncaptured, and one log line says so. The graphs hold the addresses of
the weights, gradients, optimizer state and buffers: load checkpoints before the first step, and
keep the batch shape fixed (a different one is an error, not a silent re-capture).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from stargan.config import TrainConfig
from stargan.data.transforms import to_unit_range
from stargan.losses import interpolation_weights
from stargan.training.distributed import is_distributed
from stargan.training.ema import update_ema
from stargan.training.errors import NonFiniteLossError
from stargan.training.labels import LabelLayout, target_permutation
from stargan.training.nets import V1Nets, V1Optims
from stargan.training.schedules import linear_decay_lr
from stargan.training.v1_step import SyncGrads, _no_sync, d_phase, frozen, g_phase, is_g_step

__all__ = ["V1GraphStep", "optimizer_state", "load_optimizer_state"]

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """One submitted step whose scalars are still on the device."""
    step: int
    d: Tensor
    g: Tensor | None
    lr_g: float
    lr_d: float


class V1GraphStep:
    """A v1 training step over fixed nets and optimizers (see the module docstring).

    ``optims`` must be fused Adams (``build_v1`` with ``train.cuda_graphs``): their ``found_inf``
    is the device-side NaN guard. ``capture=False`` never captures (the same static step, eagerly);
    ``None`` captures where it can."""

    def __init__(self, nets: V1Nets, optims: V1Optims, cfg: TrainConfig, layout: LabelLayout, dataset_idx: int = 0,
                 *, generator: torch.Generator | None = None, sync_grads: SyncGrads = _no_sync,
                 capture: bool | None = None, warmup: int = 3) -> None:
        for name, opt in (("g", optims.g), ("d", optims.d)):
            if not all(group.get("fused") for group in opt.param_groups):
                raise ValueError(f"V1GraphStep: optimizer {name} is not a fused Adam; build the nets with "
                                 "train.cuda_graphs: true (stargan.training.nets.build_v1)")
        self.nets, self.optims, self.cfg, self.layout, self.dataset_idx = nets, optims, cfg, layout, dataset_idx
        self.generator, self.sync_grads, self.warmup = generator, sync_grads, max(1, warmup)
        self.device = next(nets.G.parameters()).device
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        reason = ("a CPU device" if self.device.type != "cuda" else
                  "several workers (the gradient all-reduce is not captured)" if is_distributed() else None)
        self.capture = capture is not False and reason is None
        if capture is not False and reason is not None:
            log.warning("train.cuda_graphs: no CUDA graphs with %s; the static-buffer step runs uncaptured "
                        "(same maths, device-side NaN guard)", reason)
        if self.capture and not all(g.get("capturable") for o in (optims.g, optims.d) for g in o.param_groups):
            raise ValueError("V1GraphStep: CUDA-graph capture needs capturable Adam (build_v1 with train.cuda_graphs)")
        v = cfg.v1
        self.lr = {"g": torch.tensor(v.g_lr, device=self.device), "d": torch.tensor(v.d_lr, device=self.device)}
        self._lr_host = {"g": v.g_lr, "d": v.d_lr}
        self.found = {"d": torch.zeros((), device=self.device), "g": torch.zeros((), device=self.device)}
        self.names: dict[str, list[str]] = {}
        self._in: dict[str, Tensor] = {}
        self._graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self._outs: dict[str, Tensor] = {}
        self._eager_runs = {"d": 0, "g": 0}
        self._pending: list[_Pending] = []

    # ------------------------------------------------------------------ host side
    @property
    def captured(self) -> tuple[str, ...]:
        """The phases replayed as CUDA graphs so far (``"d"``, ``"g"``)."""
        return tuple(self._graphs)

    def _load(self, batch: dict) -> None:
        """Copy the batch into the static buffers (made from the first batch)."""
        image, label = batch["image"], batch["label"]
        if not self._in:
            self._in = {"image": torch.empty(image.shape, dtype=image.dtype, device=self.device),
                        "label": torch.empty(label.shape, dtype=label.dtype, device=self.device),
                        "perm": torch.empty(image.size(0), dtype=torch.long, device=self.device),
                        "alpha": torch.empty(image.size(0), 1, 1, 1, device=self.device)}
        for key, t in (("image", image), ("label", label)):
            buf = self._in[key]
            if t.shape != buf.shape or t.dtype != buf.dtype:
                raise ValueError(f"V1GraphStep: batch {key} {tuple(t.shape)} {t.dtype}, but the static buffer is "
                                 f"{tuple(buf.shape)} {buf.dtype}; the CUDA-graph step needs a fixed batch shape")
            buf.copy_(t, non_blocking=True)

    def _draw(self, batch_size: int) -> None:
        """Targets and GP weights from the generator, in :func:`v1_step.train_step`'s order."""
        perm = target_permutation(batch_size, self.device, self.generator)
        alpha = interpolation_weights(batch_size, self.device, self.generator)
        self._in["perm"].copy_(perm, non_blocking=True)
        self._in["alpha"].copy_(alpha, non_blocking=True)

    def _set_lr(self, kind: str, value: float) -> None:
        """LR as a device tensor the captured Adam reads: refilled only when the schedule moved."""
        if value != self._lr_host[kind]:
            self.lr[kind].fill_(value)
            self._lr_host[kind] = value
        for group in (self.optims.g if kind == "g" else self.optims.d).param_groups:
            group["lr"] = self.lr[kind]        # again after a load_state_dict put a float there

    def submit(self, batch: dict, step: int) -> None:
        """Queue one iteration (no host sync); its scalars wait for :meth:`collect`."""
        v = self.cfg.v1
        self._load(batch)
        self._draw(self._in["image"].size(0))
        lr_g = linear_decay_lr(step, v.g_lr, self.cfg.num_iters, v.num_iters_decay)
        lr_d = linear_decay_lr(step, v.d_lr, self.cfg.num_iters, v.num_iters_decay)
        self._set_lr("g", lr_g)
        self._set_lr("d", lr_d)
        d_out = self._run("d", self._d_phase)
        g_out = self._run("g", self._g_phase) if is_g_step(step, v.n_critic) else None
        self._pending.append(_Pending(step, d_out, g_out, lr_g, lr_d))

    def collect(self) -> list[dict[str, float]]:
        """The scalars of every pending step, in one host sync; raises
        :class:`NonFiniteLossError` for the first non-finite one (its update was skipped)."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        flat = torch.cat([t for p in pending for t in (p.d, p.g) if t is not None]).tolist()
        out, i = [], 0
        for p in pending:
            scalars: dict[str, float] = {}
            for kind, t in (("d", p.d), ("g", p.g)):
                if t is None:
                    continue
                for name, value in zip(self.names[kind], flat[i:i + t.numel()]):
                    if not math.isfinite(value):
                        raise NonFiniteLossError(p.step, name, value)
                    scalars[name] = value
                i += t.numel()
            scalars["lr/g"], scalars["lr/d"] = p.lr_g, p.lr_d
            out.append(scalars)
        return out

    def __call__(self, batch: dict, step: int) -> dict[str, float]:
        """One iteration with :func:`v1_step.train_step`'s contract: its scalars (one host sync)."""
        self.submit(batch, step)
        return self.collect()[-1]

    # ------------------------------------------------------------------ capture and replay
    def _run(self, kind: str, phase: Callable[[], Tensor]) -> Tensor:
        """Run one phase: plainly, as warm-up on a side stream, by capturing it, or by replay."""
        if not self.capture:
            return phase()
        graph = self._graphs.get(kind)
        if graph is None and self._eager_runs[kind] < self.warmup:
            self._eager_runs[kind] += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = phase()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if graph is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._outs[kind] = phase()
            self._graphs[kind] = graph
        graph.replay()
        return self._outs[kind].clone()      # the static output is rewritten by the next replay

    # ------------------------------------------------------------------ device side (captured)
    def _inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x_real, label_org, label_trg, c_org, c_trg from the static buffers."""
        layout, i = self.layout, self.dataset_idx
        x = self._in["image"]
        x = (to_unit_range(x) if x.dtype == torch.uint8 else x).contiguous(memory_format=self.memory_format)
        label_org = layout.dataset_labels(i, self._in["label"])
        label_trg = label_org[self._in["perm"]]
        return x, label_org, label_trg, layout.to_model_label(i, label_org), layout.to_model_label(i, label_trg)

    def _guard(self, kind: str, terms: dict[str, Tensor], module: nn.Module, also: Tensor | None = None) -> Tensor:
        """The phase's losses and gradient norm as one device vector; ``found[kind]`` = 1 if any is not
        finite (or ``also`` is set)."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        self.names[kind] = list(terms) + [f"{kind.upper()}/grad_norm"]
        values = torch.stack([t.detach().float().reshape(()) for t in terms.values()] + [norm.detach().float()])
        bad = (~torch.isfinite(values).all()).float()
        self.found[kind].copy_(bad if also is None else torch.maximum(bad, also))
        return values

    def _adam_unless_found(self, opt: torch.optim.Optimizer, found: Tensor) -> None:
        opt.found_inf = found                  # fused Adam skips the whole update when it is 1
        try:
            opt.step()
        finally:
            del opt.found_inf

    def _d_phase(self) -> Tensor:
        nets = self.nets
        x_real, label_org, _, _, c_trg = self._inputs()
        self.optims.d.zero_grad(set_to_none=True)
        d_loss, terms = d_phase(nets, self.cfg, self.layout, self.dataset_idx, x_real, label_org, c_trg,
                                self._in["alpha"], amp_cache=False)
        with record_function("D_backward"):
            d_loss.backward()
        with record_function("D_sync"):
            self.sync_grads(nets.D)
        out = self._guard("d", terms, nets.D)
        with record_function("D_opt"):
            self._adam_unless_found(self.optims.d, self.found["d"])
        return out

    def _g_phase(self) -> Tensor:
        nets = self.nets
        x_real, _, label_trg, c_org, c_trg = self._inputs()
        self.optims.g.zero_grad(set_to_none=True)
        with frozen(nets.D):
            g_loss, terms = g_phase(nets, self.cfg, self.layout, self.dataset_idx, x_real, label_trg, c_org, c_trg,
                                    amp_cache=False)
            with record_function("G_backward"):
                g_loss.backward()
        with record_function("G_sync"):
            self.sync_grads(nets.G)
        out = self._guard("g", terms, nets.G, also=self.found["d"])
        with record_function("G_opt"):
            self._adam_unless_found(self.optims.g, self.found["g"])
        if nets.G_ema is not None:
            with record_function("G_ema"):
                update_ema(nets.G, nets.G_ema, self.cfg.v1.ema_beta)
        return out


# ------------------------------------------------------------------------- checkpoints

def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with a tensor LR written as a float, so a checkpoint of a CUDA-graph run
    loads anywhere as an eager run's does (one host read, at checkpoint time only)."""
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        if isinstance(group.get("lr"), Tensor):
            group["lr"] = float(group["lr"])
    return sd


def load_optimizer_state(opt: torch.optim.Optimizer, sd: dict) -> None:
    """Load ``sd`` but keep this optimizer's implementation flags (``fused``, ``capturable``,
    ``foreach``): torch takes them from the file, so an eager run's checkpoint would otherwise turn
    the CUDA-graph step's fused capturable Adam back into a plain one."""
    groups = [{**saved, **{k: own[k] for k in ("fused", "capturable", "foreach") if k in own}}
              for saved, own in zip(sd["param_groups"], opt.param_groups)]
    opt.load_state_dict({**sd, "param_groups": groups})
