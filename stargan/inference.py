"""Load any training checkpoint as a ready-to-run inference model (eval mode, no optimizers).

One loader for everything downstream of training — evaluation, export, the MLflow pyfunc and
`stargan translate` — so they agree on how a checkpoint maps to networks and label spaces.
v2 models are the EMA networks (the ones the paper evaluates); v1 has no EMA.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from stargan.config import Config, config_from_dict
from stargan.data.domains import DomainMap, resolve_domains
from stargan.training.checkpoint import CheckpointError, TrainState, load_state
from stargan.training.labels import LabelLayout


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


@dataclass
class V2Model:
    G: torch.nn.Module          # EMA generator
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


def model_from_state(state: TrainState, device: str | torch.device = "cpu") -> Model:
    cfg = config_from_dict(state.config)
    device = torch.device(device)
    if state.model == "v1":
        from stargan.training.v1_step import build_v1

        layout = LabelLayout.from_dict(state.extra["layout"])
        nets, _ = build_v1(cfg.train, layout, device)
        nets.G.load_state_dict(state.nets["G"])
        return V1Model(G=nets.G.eval().requires_grad_(False), layout=layout, config=cfg, step=state.step)
    if state.model == "v2":
        from stargan.models.v2 import build_v2

        ex = state.extra
        domains = resolve_domains(ex["label_names"], ex["label_kind"], cfg.train.v2.domains)
        nets, _ = build_v2(cfg.train, domains.num_domains, device)
        for name in ("G", "F", "E"):
            getattr(nets, name).load_state_dict(state.nets[f"{name}_ema"])
        return V2Model(G=nets.G.eval().requires_grad_(False), F=nets.F.eval().requires_grad_(False),
                       E=nets.E.eval().requires_grad_(False), domains=domains, config=cfg, step=state.step)
    raise CheckpointError(f"checkpoint model {state.model!r} is neither v1 nor v2")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """A checkpoint file (or a directory holding ``checkpoint.pt``) -> inference model."""
    return model_from_state(load_state(path, map_location="cpu"), device)


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
    from stargan.training.labels import HAIR_COLOURS

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
