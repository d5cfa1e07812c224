"""What each model kind trains: its networks (and EMA copies) and their optimizers, built from the
train config. The networks themselves are plain ``nn.Module``s in :mod:`stargan.models`; the step
functions (``v1_step``, ``v2_step``) take these bundles.

Initial weights depend on ``train.seed`` only (drawn from a forked RNG, so the caller's global RNG
is left as it was): every worker and every resumed run builds the same starting nets.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stargan.config import ConfigError, TrainConfig
from stargan.models.fan import WING_URL, load_fan
from stargan.models.ops import apply_backend_flags, compile_blocks, compile_module, set_fast_ops
from stargan.models.v1 import Discriminator as D1, Generator as G1, ResidualBlock
from stargan.models.v2 import AdainResBlk, Discriminator, Generator, MappingNetwork, ResBlk, StyleEncoder, he_init
from stargan.training.labels import LabelLayout

FAN_MISSING_MSG = ("w_hpf>0 needs the FAN landmark weights (wing.ckpt); set train.v2.wing_path to the "
                   f"file (official download: {WING_URL}) or set train.v2.w_hpf: 0")


# ------------------------------------------------------------------------------------ v1

@dataclass
class V1Nets:
    G: G1
    D: D1
    G_ema: G1 | None = None      # only with ``train.v1.ema_beta > 0``

    @property
    def G_eval(self) -> G1:
        """The generator to sample, evaluate and export: the EMA one when kept."""
        return self.G_ema if self.G_ema is not None else self.G


@dataclass
class V1Optims:
    g: torch.optim.Optimizer
    d: torch.optim.Optimizer


def build_v1(cfg: TrainConfig, layout: LabelLayout, device: torch.device | str | None = None
             ) -> tuple[V1Nets, V1Optims]:
    """G (label size ``layout.c_dim``) and D (cls size ``layout.cls_dim``) with their Adams.

    Initial weights depend on ``cfg.seed`` only (drawn from a forked RNG, so the caller's
    global RNG is left as it was). Opt-in speed knobs: ``fast_ops`` (layout-keeping instance
    norm), ``tf32`` (CUDA backend flags), ``compile`` (G only: D's gradient penalty needs a
    double backward, which compiled graphs do not support), ``compile_blocks`` (G's residual
    blocks only), ``cuda_graphs`` (fused Adam on any device, capturable on CUDA: the static step
    of :mod:`stargan.training.v1_graph` skips a non-finite update through its ``found_inf``).
    """
    v = cfg.v1
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = G1(v.g_conv_dim, layout.c_dim, v.g_repeat_num, v.residual, v.residual_scale, v.label_norm,
                 v.g_edge_kernel)
        D = D1(cfg.image_size, v.d_conv_dim, layout.cls_dim, v.d_repeat_num)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    G = G.to(device=device, memory_format=memory_format)
    D = D.to(device=device, memory_format=memory_format)
    if cfg.fast_ops:
        set_fast_ops(G)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if v.ema_beta > 0 else None
    apply_backend_flags(cfg.tf32, device)
    if cfg.compile:
        compile_module(G)
    elif cfg.compile_blocks:
        compile_blocks(G, (ResidualBlock,))
    fused = {"fused": True} if device.type == "cuda" or cfg.cuda_graphs else {}
    if cfg.cuda_graphs and device.type == "cuda":
        fused["capturable"] = True
    g_opt = torch.optim.Adam(G.parameters(), lr=v.g_lr, betas=(v.beta1, v.beta2), **fused)
    d_opt = torch.optim.Adam(D.parameters(), lr=v.d_lr, betas=(v.beta1, v.beta2), **fused)
    return V1Nets(G, D, G_ema), V1Optims(g_opt, d_opt)


# ------------------------------------------------------------------------------------ v2

@dataclass
class V2Nets:
    """The trained nets and the EMA copies of G, F, E that are sampled, evaluated and exported.
    ``fan`` is the frozen landmark network (:class:`~stargan.models.fan.FAN`) that makes the masks
    when ``w_hpf > 0``, else None; it is neither trained nor checkpointed. ``D_single`` is D for
    the passes that are differentiated once (fakes, G phases): D itself, or with ``train.compile``
    a compiled view of the same parameters (R1's double backward always runs the eager D)."""
    G: Generator
    F: MappingNetwork
    E: StyleEncoder
    D: Discriminator
    G_ema: Generator
    F_ema: MappingNetwork
    E_ema: StyleEncoder
    fan: nn.Module | None = None
    D_single: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.D_single is None:
            self.D_single = self.D

    def trained(self) -> dict[str, nn.Module]:
        return {"G": self.G, "F": self.F, "E": self.E, "D": self.D}

    def ema(self) -> dict[str, nn.Module]:
        return {"G": self.G_ema, "F": self.F_ema, "E": self.E_ema}


@dataclass
class V2Optims:
    G: torch.optim.Adam
    F: torch.optim.Adam
    E: torch.optim.Adam
    D: torch.optim.Adam


def build_v2(cfg: TrainConfig, num_domains: int, device: torch.device | str | None = None,
             ) -> tuple[V2Nets, V2Optims]:
    """Build G, F, E, D (He init), their EMA copies and Adam optimizers from ``cfg.v2``.

    - EMA copies are deep copies of the *initialised* G, F, E. (The official code copied them
      before He init, so its EMA nets started from PyTorch's default init; with β=0.999 that
      washes out, but there is no reason to keep it.)
    - Adam(lr, betas=(beta1, beta2), weight_decay) for G, E, D and Adam(f_lr, ...) for F, with
      ``weight_decay`` as *coupled* L2 (torch Adam, not AdamW), as the official; it applies to D too.
    - ``w_hpf > 0`` needs the FAN landmark network: it is loaded (strictly, frozen) from
      ``cfg.v2.wing_path`` every time, since checkpoints do not carry it (see :mod:`stargan.models.fan`).
    """
    v2 = cfg.v2
    if num_domains < 1:
        raise ValueError(f"num_domains must be >= 1, got {num_domains}")
    fan = None
    if v2.w_hpf > 0:
        if not v2.wing_path or not Path(v2.wing_path).is_file():
            raise ConfigError(f"train.v2.wing_path: {FAN_MISSING_MSG}"
                              + (f" (no file at {v2.wing_path})" if v2.wing_path else ""))
        fan = load_fan(v2.wing_path, device)
    size = cfg.image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = Generator(size, v2.style_dim, v2.max_conv_dim, v2.w_hpf)
        Fm = MappingNetwork(v2.latent_dim, v2.style_dim, num_domains, v2.mapping_hidden)
        E = StyleEncoder(size, v2.style_dim, num_domains, v2.max_conv_dim)
        D = Discriminator(size, num_domains, v2.max_conv_dim)
        for net in (G, Fm, E, D):
            he_init(net)
    for net in (G, Fm, E, D):
        net.to(device=device)
        if cfg.fast_ops:
            set_fast_ops(net)
    apply_backend_flags(cfg.tf32, device)
    if cfg.channels_last:
        for net in (G, E, D):
            net.to(memory_format=torch.channels_last)
    nets = V2Nets(G, Fm, E, D, copy.deepcopy(G), copy.deepcopy(Fm), copy.deepcopy(E), fan=fan)
    for net in nets.ema().values():
        net.requires_grad_(False)
    if cfg.compile:
        for net in (G, Fm, E):
            compile_module(net)
        nets.D_single = torch.compile(D)
    elif cfg.compile_blocks:                  # D's blocks also serve R1's double backward: eager
        for net in (G, E):
            compile_blocks(net, (ResBlk, AdainResBlk))
    on_cuda = device is not None and torch.device(device).type == "cuda"
    fused = {"fused": True} if cfg.fast_ops and on_cuda else {}

    def adam(module: nn.Module, lr: float) -> torch.optim.Adam:
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(v2.beta1, v2.beta2),
                                weight_decay=v2.weight_decay, **fused)

    return nets, V2Optims(G=adam(G, v2.lr), F=adam(Fm, v2.f_lr), E=adam(E, v2.lr), D=adam(D, v2.lr))
