"""``train.init_from``: start a new run from another checkpoint's weights (fine-tuning).

Not a resume: the run starts at step 0 with *this* config (its learning rates, loss weights, λ_ds
decay and data), so a model imported with ``stargan import-official`` (or trained in another
project) continues training on the user's data. What the checkpoint has is used: the EMA nets, the
trained nets (else the EMA ones), D, and the optimizer states (Adam's moments and step counts,
with this config's hyperparameters). What it lacks starts fresh, and the run says which. Once the
run has written a checkpoint of its own, a restart resumes that one and ``init_from`` is unused.

Only the networks' shapes must agree (:data:`~stargan.training.checkpoint.INIT_KEYS`): the
dataset and its domain names may differ, as long as there are as many domains (v2) or labels
(v1), in the same order.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from stargan.config import Config
from stargan.files import sha256_file
from stargan.training.checkpoint import (INIT_KEYS, CheckpointError, TrainState, check_compatible, load_state,
                                         state_dict_problems)

#: Optimizer group entries that are this run's choice, not the checkpoint's.
_HYPER = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable", "differentiable",
          "fused")


def init_path(cfg: Config, repo_root: Path) -> Path:
    """``train.init_from`` as a path (relative ones start at the project root); it must exist."""
    path = Path(cfg.train.init_from).expanduser()
    path = path if path.is_absolute() else Path(repo_root) / path
    if not path.exists():
        raise CheckpointError(f"train.init_from: {path} does not exist (a checkpoint.pt or its folder; relative "
                              "paths start at the project root)")
    return path.resolve()


def resolve_init_from(cfg: Config, repo_root: Path) -> Config:
    """``cfg`` with ``train.init_from`` made absolute, so every worker finds the same file."""
    if not cfg.train.init_from:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(init_path(cfg, repo_root))))


def init_digest(cfg: Config, repo_root: Path) -> str:
    """What a run name must change with: the content of the file, not its path."""
    if not cfg.train.init_from:
        return ""
    path = init_path(cfg, repo_root)
    return sha256_file(path / "checkpoint.pt" if path.is_dir() else path)


def load_init_state(cfg: Config) -> TrainState:
    """The ``train.init_from`` checkpoint, refused when its networks cannot be this run's."""
    state = load_state(cfg.train.init_from)
    check_compatible(state, cfg.to_dict(), what=f"start from train.init_from={cfg.train.init_from}", keys=INIT_KEYS)
    return state


def load_net(module: nn.Module, sd: dict, what: str, path: str) -> None:
    problems = state_dict_problems(sd, module.state_dict())
    if problems:
        raise CheckpointError(f"train.init_from: {path}: {what} does not fit this run's network: {'; '.join(problems)}")
    module.load_state_dict(sd)


def load_optimizer(opt: torch.optim.Optimizer, osd: dict, what: str, path: str) -> None:
    """Adam's moments and step counts from ``osd``; lr, betas, weight decay (and the rest of the
    group settings) stay this run's."""
    mine = [{k: g[k] for k in _HYPER if k in g} for g in opt.param_groups]
    try:
        opt.load_state_dict(osd)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"train.init_from: {path}: the optimizer state of {what} does not fit: {e}") from None
    for group, own in zip(opt.param_groups, mine):
        group.update(own)
