"""Load any training checkpoint as a ready-to-run inference model (eval mode, no optimizers).

One loader for everything downstream of training — evaluation, export, the MLflow pyfunc and
`stargan translate` — so they agree on how a checkpoint maps to networks and label spaces.
v2 models are the EMA networks (the ones the paper evaluates); v1 models are G, or its EMA when
training kept one (``train.v1.ema_beta > 0``). A v2 model trained
with ``w_hpf > 0`` also needs the FAN landmark weights, which checkpoints do not carry: they are
read from the ``train.v2.wing_path`` recorded in the checkpoint's config (or the ``wing_path``
given to :func:`load_model`), and the FAN is folded into ``V2Model.G`` (:class:`MaskedGenerator`)
so every consumer of ``G(x, s)`` (translation, evaluation, export) gets the masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from stargan.config import Config, config_from_dict
from stargan.data.domains import DomainMap, resolve_domains
from stargan.errors import StarganError
from stargan.models.fan import WING_URL
from stargan.training.checkpoint import CheckpointError, TrainState, load_state
from stargan.training.labels import HAIR_COLOURS, LabelLayout
from stargan.training.nets import build_v1, build_v2


class TranslateError(StarganError, ValueError):
    """Bad input for a translation (no face, unknown domain, wrong model kind, unreadable image)."""


@dataclass
class V1Model:
    G: torch.nn.Module
    layout: LabelLayout
    config: Config
    step: int
    kind: str = "v1"

    @property
    def image_size(self) -> int:
        return self.config.train.image_size

    def target_names(self) -> list[str]:
        """Every target the model can produce: ``dataset/label`` when jointly trained."""
        return self.layout.all_target_names()

    @torch.no_grad()
    def translate(self, x: Tensor, c: Tensor) -> Tensor:
        """G(x, c) with model labels ``c`` [B, c_dim] (see :meth:`LabelLayout.to_model_label`)."""
        return self.G(x, c.to(x.device, x.dtype))


class MaskedGenerator(nn.Module):
    """``G(x, s)`` with the FAN masks of ``x``: a ``w_hpf > 0`` generator as inference sees it.

    Such a generator was trained with its high-pass skips fed by the masks; called without them it
    runs but drops the source detail the skips carry. Wrapping it keeps the plain ``G(x, s)``
    signature, so code written for ``w_hpf == 0`` models needs no second path."""
    def __init__(self, G: nn.Module, fan: nn.Module):
        super().__init__()
        self.G, self.fan = G, fan

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return self.G(x, s, masks=self.fan.get_heatmap(x))


@dataclass
class V2Model:
    G: torch.nn.Module          # EMA generator (a MaskedGenerator when w_hpf > 0)
    F: torch.nn.Module          # EMA mapping network
    E: torch.nn.Module          # EMA style encoder
    domains: DomainMap
    config: Config
    step: int
    kind: str = "v2"

    @property
    def image_size(self) -> int:
        return self.config.train.image_size

    @property
    def latent_dim(self) -> int:
        return self.config.train.v2.latent_dim

    def target_names(self) -> list[str]:
        return list(self.domains.names)

    @torch.no_grad()
    def translate_latent(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return self.G(x, self.F(z.to(x.device), y.to(x.device)))

    @torch.no_grad()
    def translate_reference(self, x: Tensor, x_ref: Tensor, y: Tensor) -> Tensor:
        return self.G(x, self.E(x_ref.to(x.device), y.to(x.device)))


Model = V1Model | V2Model


def _use_wing_path(cfg: Config, wing_path: str | Path | None) -> None:
    """Point ``cfg`` at the FAN weights a ``w_hpf > 0`` checkpoint needs, or say plainly why not."""
    v2 = cfg.train.v2
    if v2.w_hpf <= 0:
        return
    path = str(wing_path) if wing_path is not None else v2.wing_path
    if not path or not Path(path).is_file():
        where = f"{path!r}, which does not exist here" if path else "no file (train.v2.wing_path is empty)"
        raise CheckpointError(
            f"this v2 checkpoint was trained with train.v2.w_hpf={v2.w_hpf}: its generator needs the FAN "
            f"landmark weights (wing.ckpt), which checkpoints do not carry, and the run's config names {where}. "
            f"Put wing.ckpt there (official download: {WING_URL}) or pass wing_path= to load_model")
    v2.wing_path = path


def model_from_state(state: TrainState, device: str | torch.device = "cpu",
                     wing_path: str | Path | None = None) -> Model:
    """``wing_path``: the FAN weights for a ``w_hpf > 0`` v2 checkpoint, instead of the path its
    config records (which may not exist on this machine)."""
    cfg = config_from_dict(state.config)
    device = torch.device(device)
    if state.model == "v1":
        layout = LabelLayout.from_dict(state.extra["layout"])
        nets, _ = build_v1(cfg.train, layout, device)
        # The EMA generator when training kept one (train.v1.ema_beta > 0), else the last iterate.
        nets.G.load_state_dict(state.nets["G_ema"] if "G_ema" in state.nets else state.nets["G"])
        return V1Model(G=nets.G.eval().requires_grad_(False), layout=layout, config=cfg, step=state.step)
    if state.model == "v2":
        ex = state.extra
        domains = resolve_domains(ex["label_names"], ex["label_kind"], cfg.train.v2.domains)
        _use_wing_path(cfg, wing_path)
        nets, _ = build_v2(cfg.train, domains.num_domains, device)
        for name in ("G", "F", "E"):
            getattr(nets, name).load_state_dict(state.nets[f"{name}_ema"])
        G = nets.G if nets.fan is None else MaskedGenerator(nets.G, nets.fan)
        return V2Model(G=G.eval().requires_grad_(False), F=nets.F.eval().requires_grad_(False),
                       E=nets.E.eval().requires_grad_(False), domains=domains, config=cfg, step=state.step)
    raise CheckpointError(f"checkpoint model {state.model!r} is neither v1 nor v2")


def load_model(path: str | Path, device: str | torch.device = "cpu",
               wing_path: str | Path | None = None) -> Model:
    """A checkpoint file (or a directory holding ``checkpoint.pt``) -> inference model.
    ``wing_path`` overrides the FAN weights file recorded for a ``w_hpf > 0`` v2 model."""
    return model_from_state(load_state(path, map_location="cpu"), device, wing_path)


def v1_targets_from_names(model: V1Model, names: Sequence[str], dataset: str | None = None,
                          base: Tensor | None = None) -> Tensor:
    """Model label [1, c_dim] that switches on the named labels (e.g. ``["Blond_Hair", "Male"]``).

    Names are the dataset's label names (``celeba/Male`` or plain ``Male``). Hair colours and
    one-hot classes are exclusive, as in the official test-time labels; ``base`` (the source
    image's labels in that dataset's space, if known) keeps the attributes that are not named.
    """
    layout = model.layout
    known = {}
    for i, d in enumerate(layout.datasets):
        for j, n in enumerate(d.label_names):
            known.setdefault(n, (i, j))
            known[f"{d.name}/{n}"] = (i, j)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown domain name(s) {', '.join(unknown)}; this model knows: "
                         f"{', '.join(model.target_names())}")
    idx = {known[n][0] for n in names}
    if dataset is not None:
        idx.add(layout.index(dataset))
    if len(idx) != 1:
        raise ValueError(f"targets {list(names)} span several datasets; name labels of one dataset")
    (di,) = idx
    d = layout.datasets[di]
    label = base.clone().float().reshape(1, -1) if base is not None else torch.zeros(1, len(d.label_names))

    for n in names:
        _, j = known[n]
        if d.kind == "onehot":
            label.zero_()
        elif d.label_names[j] in HAIR_COLOURS:
            for k, other in enumerate(d.label_names):
                if other in HAIR_COLOURS:
                    label[0, k] = 0.0
        label[0, j] = 1.0
    return layout.to_model_label(di, label)


# ------------------------------------------------------------------ translating by name

def to_tensor(rgb: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> float32 [1, 3, H, W] in [-1, 1] (the training normalisation)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)



def v1_label(model: V1Model, target: str) -> Tensor:
    names = [n.strip() for n in target.split(",") if n.strip()]
    try:
        return v1_targets_from_names(model, names)
    except ValueError as e:
        raise TranslateError(str(e)) from None


def domain_index(model: V2Model, name: str) -> int:
    names = model.target_names()
    if name not in names:
        raise TranslateError(f"unknown domain name {name!r}; this model knows: {', '.join(names)}")
    return names.index(name)


def latent(seed: int, latent_dim: int) -> Tensor:
    return torch.randn(1, latent_dim, generator=torch.Generator().manual_seed(int(seed)))


def need_kind(model: Model, kind: str, what: str) -> None:
    """Refuse an option that only the other StarGAN version has (a seed or reference for v1)."""
    if model.kind != kind:
        raise TranslateError(f"{what} needs a StarGAN {kind} model; this is a {model.kind} model "
                             f"(targets: {', '.join(model.target_names())})")


# ------------------------------------------------------------------------------ translate

@torch.no_grad()
def translate_v1(model: Model, x: Tensor, targets: Sequence[str]) -> Tensor:
    """Row i of ``x`` [N,3,S,S] to ``targets[i]`` (label names, comma-combined)."""
    need_kind(model, "v1", "a label target")
    c = torch.cat([v1_label(model, t) for t in targets])
    return model.translate(x, c)


@torch.no_grad()
def translate_latent(model: Model, x: Tensor, targets: Sequence[str], seeds: Sequence[int]) -> Tensor:
    need_kind(model, "v2", "--seed (latent-guided)")
    y = torch.tensor([domain_index(model, t) for t in targets], dtype=torch.int64)
    z = torch.cat([latent(s, model.latent_dim) for s in seeds])
    return model.translate_latent(x, y, z)


@torch.no_grad()
def translate_reference(model: Model, x: Tensor, refs: Tensor, targets: Sequence[str]) -> Tensor:
    need_kind(model, "v2", "--reference (reference-guided)")
    y = torch.tensor([domain_index(model, t) for t in targets], dtype=torch.int64)
    return model.translate_reference(x, refs, y)
