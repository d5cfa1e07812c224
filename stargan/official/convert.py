"""Read the official StarGAN / StarGAN v2 checkpoint files and map them onto our networks.

Our networks have the official layer lists, so most state-dict names are the official ones. What
differs, and what this module does about it:

- **Loading**: ``torch.load(weights_only=True)`` only. The official files are plain tensors in
  (ordered) dicts, which load without running any pickled code; a file that needs more is refused.
  The legacy (pre-1.6, non-zip) serialisation the released files use loads the same way.
- **v1 G**: the official instance norms were built with ``track_running_stats=True`` (for PyTorch
  0.3 checkpoints), so the files carry ``running_mean`` / ``running_var`` (and, saved with PyTorch
  >= 0.4, ``num_batches_tracked``) per norm. The official code never calls ``.eval()``, so those
  buffers are written and never read: every image is normalised by its own statistics, which is
  what our norms (no running statistics) always do. They are dropped (counted in the report), and
  only at the positions of our norms: a running-stat key anywhere else is an unexpected key.
- **v1 D**: the official heads are ``conv1`` (real/fake patch map) and ``conv2`` (domain
  classifier); ours are ``conv_src`` and ``conv_cls``.
- **v2**: the files are dicts of per-network state dicts (``generator``, ``mapping_network``,
  ``style_encoder``, ``discriminator``; ``fan`` too, since the official code saves its landmark
  network in every file). Keys may carry DataParallel's ``module.`` prefix (saved after the
  2021 DataParallel change, clovaai/stargan-v2#173); it is stripped. ``hpf.filter`` (the high-pass
  kernel, a saved buffer only in files written after that change, issues #103/#104) is a function
  of ``w_hpf`` here and not saved: it is checked against ``w_hpf`` and dropped.
- **v2 optimizers** (``_optims.ckpt``): a torch optimizer state names parameters by their *index*
  in the order the official module registered them, which is not always ours (e.g. the official
  generator registers ``to_rgb`` after the encoder and decoder; ours before). The official order
  is the key order of the matching ``_nets.ckpt`` state dict, so the states are re-indexed by
  name through it, and each moment tensor is checked against its parameter's shape.

Anything that does not fit (a missing, unexpected or wrongly shaped tensor, a non-finite value)
raises :class:`OfficialFormatError` naming the file and the offending keys.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stargan.errors import StarganError
from stargan.training.checkpoint import state_dict_problems

#: Official v2 network names -> ours.
V2_NETS = {"generator": "G", "mapping_network": "F", "style_encoder": "E", "discriminator": "D"}
#: Official v1 D heads -> ours.
V1_D_HEADS = {"conv1.": "conv_src.", "conv2.": "conv_cls."}
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
_LAPLACIAN = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])


class OfficialFormatError(StarganError, ValueError):
    """An official checkpoint file that cannot be used; the message names the file and the keys."""


def read(path: Path, what: str) -> Any:
    """The object in ``path``, loaded weights-only (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise OfficialFormatError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise OfficialFormatError(f"{what} {path}: empty file (0 bytes): an interrupted download? Fetch it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types; all mean "not a plain weights file"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise OfficialFormatError(f"{what} {path}: refused: not a weights-only torch file ({first}). The official "
                                  "files hold tensors only; a damaged download or a file that needs pickled code "
                                  "to load is not one of them") from None


def strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without DataParallel's ``module.`` prefix (repeated prefixes too)."""
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def state_dict(obj: Any, path: Path, what: str) -> dict[str, Tensor]:
    """``obj`` as a state dict of tensors (``module.`` stripped), or a clear refusal."""
    if not isinstance(obj, Mapping) or not obj:
        raise OfficialFormatError(f"{what} {path}: expected a state dict (name -> tensor), found "
                                  f"{type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}")
    sd = strip_module(obj)
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise OfficialFormatError(f"{what} {path}: not a state dict of tensors: {', '.join(map(str, bad[:5]))} "
                                  f"{'is' if len(bad) == 1 else 'are'} not tensors")
    return sd


def _check(found: dict[str, Tensor], own: Mapping[str, Tensor], path: Path, what: str,
           expected: str) -> dict[str, Tensor]:
    """``found`` loadable as ``own`` (a module's state dict: names, shapes), with finite values, or an
    error naming the offending keys."""
    problems = state_dict_problems(found, own)
    if problems:
        raise OfficialFormatError(f"{what} {path} does not match {expected}: {'; '.join(problems)}. Is it the "
                                  "right file for this option and model (see `stargan import-official --help`)?")
    nonfinite = [k for k, v in found.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise OfficialFormatError(f"{what} {path}: non-finite values (NaN/inf) in {', '.join(nonfinite[:5])}"
                                  f"{f' ({len(nonfinite)} tensors)' if len(nonfinite) > 5 else ''}: a corrupted file")
    return {k: found[k].to(own[k].dtype) for k in own}


def _count(sd: Mapping[str, Tensor], fmt: str) -> int:
    n = 0
    while fmt.format(n) in sd:
        n += 1
    return n


def _need(sd: Mapping[str, Tensor], key: str, path: Path, what: str) -> Tensor:
    if key not in sd:
        first = ", ".join(list(sd)[:5])
        raise OfficialFormatError(f"{what} {path}: no '{key}' tensor, so not an official {what} (its first keys: "
                                  f"{first})")
    return sd[key]


# ------------------------------------------------------------------------------------ v1

@dataclass
class V1Arch:
    """The v1 sizes read from the files' tensor shapes (model.py defaults: 64, 6, 64, 6)."""
    g_conv_dim: int
    c_dim: int
    g_repeat_num: int
    d_conv_dim: int | None = None
    cls_dim: int | None = None
    d_repeat_num: int | None = None
    image_size: int | None = None      # from D's classifier kernel; None without D

    def to_dict(self) -> dict:
        return asdict(self)


def v1_arch(g: dict[str, Tensor], d: dict[str, Tensor] | None, g_path: Path, d_path: Path | None) -> V1Arch:
    w = _need(g, "main.0.weight", g_path, "generator")
    blocks = {m.group(1) for k in g if (m := re.match(r"main\.(\d+)\.main\.", k))}     # residual blocks
    arch = V1Arch(g_conv_dim=int(w.shape[0]), c_dim=int(w.shape[1]) - 3, g_repeat_num=len(blocks))
    if d is not None:
        arch.d_conv_dim = int(_need(d, "main.0.weight", d_path, "discriminator").shape[0])
        arch.d_repeat_num = sum(1 for k in d if k.startswith("main.") and k.endswith(".weight"))
        cls = d.get("conv2.weight")     # without it: sizes from G and the model, and the key check says what is wrong
        if isinstance(cls, Tensor) and cls.dim() == 4:
            arch.cls_dim = int(cls.shape[0])
            arch.image_size = int(cls.shape[-1]) * 2 ** arch.d_repeat_num
    return arch


def v1_generator(g: dict[str, Tensor], G: nn.Module, path: Path) -> tuple[dict[str, Tensor], list[str]]:
    """Official G state dict -> ours, and the running-stat buffers dropped (module docstring)."""
    norms = {name for name, m in G.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    dropped = [k for k in g if k.rpartition(".")[2] in _RUNNING_STATS and k.rpartition(".")[0] in norms]
    kept = {k: v for k, v in g.items() if k not in dropped}
    return _check(kept, G.state_dict(), path, "generator", "the StarGAN generator of these sizes"), dropped


def v1_discriminator(d: dict[str, Tensor], D: nn.Module, path: Path) -> dict[str, Tensor]:
    """Official D state dict -> ours: heads ``conv1``/``conv2`` renamed ``conv_src``/``conv_cls``.
    Checked in the official names, so an error names the keys as the file should have them."""
    to_official = {new: old for old, new in V1_D_HEADS.items()}
    own = {_rename(k, to_official): v for k, v in D.state_dict().items()}
    checked = _check(d, own, path, "discriminator", "the StarGAN discriminator of these sizes (heads conv1, conv2)")
    return {_rename(k, V1_D_HEADS): v for k, v in checked.items()}


def _rename(key: str, prefixes: Mapping[str, str]) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


# ------------------------------------------------------------------------------------ v2

@dataclass
class V2Arch:
    """The v2 sizes read from the tensor shapes (official 256 px: 256, 64, 16, 512, 512, K)."""
    img_size: int
    style_dim: int
    latent_dim: int
    hidden_dim: int
    max_conv_dim: int
    num_domains: int
    high_pass: bool                    # the generator has the extra w_hpf > 0 encoder/decoder block
    w_hpf_in_file: float | None        # from a saved hpf.filter, when the file has one

    def to_dict(self) -> dict:
        return asdict(self)


def split_v2(obj: Any, path: Path, what: str, required: tuple[str, ...]) -> tuple[dict[str, dict], dict | None]:
    """A v2 file -> ({official net name: state dict}, the FAN state dict or None)."""
    if not isinstance(obj, Mapping):
        raise OfficialFormatError(f"{what} {path}: expected the official dict of networks "
                                  f"({', '.join(required)}), found {type(obj).__name__}")
    obj = strip_module(obj)
    unknown = [k for k in obj if k not in V2_NETS and k != "fan"]
    missing = [k for k in required if k not in obj]
    if unknown or missing:
        parts = ([f"missing networks: {', '.join(missing)}"] if missing else []) + \
                ([f"unexpected entries: {', '.join(map(str, unknown[:5]))}"] if unknown else [])
        held = [str(k) for k in obj]
        raise OfficialFormatError(f"{what} {path} is not an official StarGAN v2 checkpoint: {'; '.join(parts)} "
                                  f"(it holds {len(held)} entries: {', '.join(held[:5]) or 'nothing'}"
                                  f"{', ...' if len(held) > 5 else ''})")
    nets = {k: state_dict(v, path, f"{what} [{k}]") for k, v in obj.items() if k in V2_NETS}
    fan = state_dict(obj["fan"], path, f"{what} [fan]") if "fan" in obj else None
    return nets, fan


def v2_arch(nets: dict[str, dict[str, Tensor]], path: Path) -> V2Arch:
    F, E, G = nets["mapping_network"], nets["style_encoder"], nets["generator"]
    what = "nets_ema"
    first = _need(F, "shared.0.weight", path, f"{what} [mapping_network]")
    head = _need(F, "unshared.0.6.weight", path, f"{what} [mapping_network]")
    blocks = sum(1 for k in E if k.startswith("shared.") and k.endswith(".conv1.weight"))
    img = 2 ** (blocks + 2)
    last = _need(E, f"shared.{blocks + 2}.weight", path, f"{what} [style_encoder]")
    encode = _count(G, "encode.{}.conv1.weight")
    hpf = G.get("hpf.filter")
    w_in_file = float(8.0 / hpf[1, 1]) if isinstance(hpf, Tensor) and hpf.shape == (3, 3) and hpf[1, 1] != 0 else None
    return V2Arch(img_size=img, style_dim=int(head.shape[0]), latent_dim=int(first.shape[1]),
                  hidden_dim=int(first.shape[0]), max_conv_dim=int(last.shape[0]),
                  num_domains=_count(F, "unshared.{}.0.weight"), high_pass=encode == blocks + 2 - 4 + 3,
                  w_hpf_in_file=w_in_file)


def v2_net(sd: dict[str, Tensor], module: nn.Module, name: str, path: Path, what: str,
           w_hpf: float) -> dict[str, Tensor]:
    """One official v2 network's state dict -> ours (``hpf.filter`` checked against ``w_hpf``, dropped)."""
    sd = dict(sd)
    hpf = sd.pop("hpf.filter", None) if name == "generator" else None
    if hpf is not None and w_hpf > 0:
        expected = _LAPLACIAN / w_hpf
        if hpf.shape != expected.shape or not torch.allclose(hpf.float(), expected, atol=1e-6):
            raise OfficialFormatError(f"{what} {path} [generator]: hpf.filter is not the Laplacian / w_hpf for "
                                      f"w_hpf={w_hpf:g} (its centre is {float(hpf.flatten()[4]) if hpf.numel() == 9 else '?'}); "
                                      "pass the w_hpf the model was trained with (--w-hpf)")
    return _check(sd, module.state_dict(), path, f"{what} [{name}]", f"the StarGAN v2 {name} of these sizes")


def remap_optimizer(osd: Any, official_order: list[str], module: nn.Module, path: Path, what: str) -> dict:
    """An official optimizer state for ``module``'s parameters, re-indexed from the official
    parameter order (``official_order``: the key order of the official state dict) to ours."""
    if not (isinstance(osd, Mapping) and isinstance(osd.get("state"), Mapping)
            and isinstance(osd.get("param_groups"), list) and len(osd["param_groups"]) == 1
            and isinstance(osd["param_groups"][0], Mapping)):
        raise OfficialFormatError(f"{what} {path}: not a torch optimizer state with one parameter group "
                                  "(expected {'state': ..., 'param_groups': [{...}]})")
    group = osd["param_groups"][0]
    ids = list(group.get("params", []))
    own = dict(module.named_parameters())
    names = [n for n in official_order if n in own]
    if len(ids) != len(own) or len(names) != len(own):
        raise OfficialFormatError(f"{what} {path}: the optimizer holds {len(ids)} parameters and the matching nets "
                                  f"file names {len(names)} of this network's {len(own)}: not the optimizer of "
                                  "these networks (use the _optims.ckpt saved with the _nets.ckpt)")
    by_name = dict(zip(names, ids))
    state, bad = {}, []
    for j, (name, p) in enumerate(own.items()):
        st = osd["state"].get(by_name[name])
        if st is None:                 # Adam makes a state at a parameter's first step only
            continue
        if not isinstance(st, Mapping):
            bad.append(f"{name} (state is {type(st).__name__})")
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            t = st.get(key)
            if not isinstance(t, Tensor) or t.shape != p.shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                bad.append(f"{name}.{key} {got} for a parameter of shape {tuple(p.shape)}")
        state[j] = dict(st)
    if bad:
        raise OfficialFormatError(f"{what} {path}: optimizer state does not match the parameters: "
                                  f"{', '.join(bad[:5])}{f' ({len(bad)} in all)' if len(bad) > 5 else ''}")
    hyper = {k: v for k, v in group.items() if k != "params"}
    return {"state": state, "param_groups": [{**hyper, "params": list(range(len(own)))}]}
