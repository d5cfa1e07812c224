"""The one checkpoint format: a ``torch.save`` dict of tensors and plain types.

Why this shape:
- Loadable with ``torch.load(weights_only=True)``: no pickled code runs on load, so a checkpoint
  from an untrusted source cannot execute anything (a tampered, pickled payload is refused).
- Complete for exact resume: nets, optimizers, step, every RNG the step draws from, and the
  config. Learning rates and λ_ds are functions of the step, so they need no state of their own.
- Keys never carry DDP/DataParallel ``module.`` prefixes (we never wrap the nets).
- Written atomically (temp file + fsync + rename): a crash or a full disk mid-write leaves the
  previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stargan.errors import StarganError

FORMAT = "stargan-checkpoint/1"
FILENAME = "checkpoint.pt"

# Config keys that change the networks' shapes or the meaning of their labels: a checkpoint
# trained under other values cannot be resumed or evaluated with this config.
ARCH_KEYS = ("train.model", "train.image_size", "train.datasets", "train.v1.g_conv_dim", "train.v1.d_conv_dim",
             "train.v1.g_repeat_num", "train.v1.d_repeat_num", "train.v1.residual", "train.v1.residual_scale",
             "train.v1.label_norm", "train.v1.g_edge_kernel",
             "train.v2.latent_dim",
             "train.v2.style_dim", "train.v2.max_conv_dim", "train.v2.mapping_hidden", "train.v2.w_hpf",
             "train.v2.domains")
#: Architecture keys added after checkpoints were already written, with the value those checkpoints
#: were trained under: a checkpoint without the key is read as that value, not as a mismatch.
ARCH_DEFAULTS = {"train.v1.residual": False, "train.v1.residual_scale": 1.0,
                 "train.v1.label_norm": False, "train.v1.g_edge_kernel": 7}


class CheckpointError(StarganError, RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or from an incompatible config."""


@dataclass
class TrainState:
    step: int                                   # iterations completed
    model: str                                  # "v1" | "v2"
    config: dict                                # Config.to_dict() of the run that wrote it
    nets: dict[str, dict[str, torch.Tensor]]
    optims: dict[str, dict] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)   # label layout, domains, mlflow run id, ...


def arch_signature(config: dict) -> dict[str, Any]:
    out = {}
    for dotted in ARCH_KEYS:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[dotted] = ARCH_DEFAULTS.get(dotted) if node is None else node
    return out


#: The architecture keys a run that *starts from* a checkpoint (``train.init_from``) must share with
#: it: the data may be another dataset with other domain names, as long as the nets have the same shapes.
INIT_KEYS = tuple(k for k in ARCH_KEYS if k not in ("train.datasets", "train.v2.domains"))


def check_compatible(state: TrainState, config: dict, *, what: str = "resume",
                     keys: tuple[str, ...] = ARCH_KEYS) -> None:
    """Raise :class:`CheckpointError` listing every architecture key (of ``keys``) that differs."""
    mine, theirs = arch_signature(config), arch_signature(state.config)
    diff = {k: (theirs[k], mine[k]) for k in keys if mine[k] != theirs[k]}
    if diff:
        lines = "; ".join(f"{k}: checkpoint has {a!r}, params have {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"cannot {what}: the checkpoint was trained with another configuration ({lines}). "
                              "Use the params it was trained with, or train a new model "
                              "(delete the checkpoint / ray_results run to start over)")


def arch_overrides(state: TrainState) -> list[str]:
    """``KEY=VALUE`` overrides (the ``-S`` form) that make a params file describe this checkpoint's
    networks: its architecture keys and ``train.v2.wing_path``. With them, a checkpoint made
    elsewhere (``stargan import-official``, another project) is evaluated or exported with the
    project's own data and evaluation params, without copying its sizes into params.yaml."""
    other = "train.v1." if state.model == "v2" else "train.v2."     # the other model's sizes do not matter
    sig = {k: v for k, v in arch_signature(state.config).items() if not k.startswith(other)}
    if state.model == "v2":
        sig["train.v2.wing_path"] = ((state.config.get("train") or {}).get("v2") or {}).get("wing_path")
    return [f"{k}={json.dumps(v)}" for k, v in sig.items()]


def state_dict_problems(found: dict[str, Any], own: dict[str, torch.Tensor], n: int = 5) -> list[str]:
    """What keeps ``found`` from loading into a module whose state dict is ``own``: missing keys,
    unexpected keys, shape mismatches and values that are not tensors, the first ``n`` of each named
    (with the count), so one error message says exactly which entries are wrong. Empty = loadable."""
    def head(keys: list[str]) -> str:
        return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")

    not_tensor = [k for k, v in found.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    shapes = [f"{k} {tuple(found[k].shape)} in the file, {tuple(v.shape)} in the network" for k, v in own.items()
              if isinstance(found.get(k), torch.Tensor) and found[k].shape != v.shape]
    return [f"{label}: {head(keys)}" for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                        ("shape mismatches", shapes), ("not tensors", not_tensor))
            if keys]


def save_state(state: TrainState, path: str | Path) -> Path:
    """Atomically write ``state`` to ``path`` (a file, or a directory that gets ``checkpoint.pt``)."""
    path = Path(path)
    if path.suffix != ".pt":
        path = path / FILENAME
    payload = {
        "format": FORMAT, "step": int(state.step), "model": state.model,
        "config_json": json.dumps(state.config, sort_keys=True),
        "nets": state.nets, "optims": state.optims, "rng": state.rng,
        "extra_json": json.dumps(state.extra, sort_keys=True),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):   # disk full, read-only or unwritable folder, quota, ...
            kept = "the previous checkpoint there is intact" if path.exists() else "nothing was written"
            raise CheckpointError(f"cannot write the checkpoint {path}: {e.strerror or e} "
                                  f"[errno {e.errno}]; {kept}. Free space or point train.output_dir / "
                                  "train.ray.storage_path at a writable folder") from e
        raise
    return path


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> TrainState:
    """Load with ``weights_only=True``; anything else (pickled objects, other formats, a file cut
    short, a dict missing a field) is refused with a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes): an interrupted copy? Use another checkpoint "
                              "or train again")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types; all mean "not safe/not ours"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: refused to load: not a safe stargan checkpoint "
                              f"(weights-only load failed: {reason})") from None
    return _state_from_payload(payload, path)


#: Fields every checkpoint holds, with the type each must have.
_FIELDS = {"step": int, "model": str, "config_json": str, "nets": dict, "optims": dict, "rng": dict,
           "extra_json": str}


def _state_from_payload(payload: Any, path: Path) -> TrainState:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} file (format={found!r})")
    bad = [f"'{k}' missing" if k not in payload else f"'{k}' is {type(payload[k]).__name__}, not {t.__name__}"
           for k, t in _FIELDS.items() if not isinstance(payload.get(k), t) or isinstance(payload.get(k), bool)]
    if bad:
        raise CheckpointError(f"{path}: damaged {FORMAT} file: {', '.join(bad)}")
    if payload["step"] < 0 or payload["model"] not in ("v1", "v2"):
        raise CheckpointError(f"{path}: damaged {FORMAT} file: step {payload['step']}, model {payload['model']!r}")
    try:
        config, extra = json.loads(payload["config_json"]), json.loads(payload["extra_json"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: damaged {FORMAT} file: its config is not valid JSON ({e})") from None
    return TrainState(step=payload["step"], model=payload["model"], config=config, nets=payload["nets"],
                      optims=payload["optims"], rng=payload["rng"], extra=extra)


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in generators.items()} | {"torch_global": torch.get_rng_state()}


def restore_rng(generators: dict[str, torch.Generator], rng: dict[str, torch.Tensor]) -> None:
    for name, g in generators.items():
        if name in rng:
            g.set_state(rng[name])
    if "torch_global" in rng:
        torch.set_rng_state(rng["torch_global"])
