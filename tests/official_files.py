"""Files in the official StarGAN / StarGAN v2 checkpoint formats, made from our own randomly
initialised networks at small sizes, the way the official code writes them:

- v1 (yunjey/stargan ``solver.py``): ``torch.save(G.state_dict(), '<iter>-G.ckpt')`` and the same for
  D; G's norms carry running statistics (``track_running_stats=True``), D's heads are ``conv1`` and
  ``conv2``. Saved in the legacy (pre-1.6, non-zip) serialisation, as the 2018 files are.
- v2 (clovaai/stargan-v2 ``checkpoint.py``): ``torch.save({name: net.state_dict(), ...})`` for
  ``_nets_ema`` (generator, mapping_network, style_encoder, fan), ``_nets`` (+ discriminator) and
  ``_optims`` (one Adam state per network, parameters numbered in the official registration order,
  where the generator's ``to_rgb`` comes after its encoder and decoder).

The expected official key names are written out here from the reference notes' layer lists
(``official_v1_generator_keys`` etc.), not derived from our modules, so a test can check that the
fixtures really are in the official layout.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from stargan.models.fan import FAN
from stargan.models.v1 import Discriminator as D1, Generator as G1
from stargan.models.v2 import Discriminator, Generator, MappingNetwork, StyleEncoder

V1_SIZES = dict(conv=8, repeat=1, d_conv=8, d_repeat=4, image=16)
V2_SIZES = dict(img=16, style=8, latent=4, max_conv=16, hidden=16)


# ------------------------------------------------------------------------- official names

def official_v1_generator_keys(repeat: int) -> list[str]:
    """model.py's G: conv, IN, ReLU, 2 x (conv, IN, ReLU), ``repeat`` residual blocks [conv, IN, ReLU,
    conv, IN], 2 x (convT, IN, ReLU), conv, Tanh; convs without bias; IN with running statistics."""
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys, i = [], 0
    for _ in range(3):                                  # stem + two down convs
        keys += [f"main.{i}.weight"] + [f"main.{i + 1}.{n}" for n in norm]
        i += 3
    for _ in range(repeat):
        keys += [f"main.{i}.main.0.weight"] + [f"main.{i}.main.1.{n}" for n in norm]
        keys += [f"main.{i}.main.3.weight"] + [f"main.{i}.main.4.{n}" for n in norm]
        i += 1
    for _ in range(2):                                  # two up convs
        keys += [f"main.{i}.weight"] + [f"main.{i + 1}.{n}" for n in norm]
        i += 3
    return keys + [f"main.{i}.weight"]


def official_v1_discriminator_keys(repeat: int) -> list[str]:
    """model.py's D: ``repeat`` x (conv with bias, LeakyReLU), heads conv1 and conv2 without bias."""
    keys = [f"main.{2 * j}.{n}" for j in range(repeat) for n in ("weight", "bias")]
    return keys + ["conv1.weight", "conv2.weight"]


#: A few official v2 names (reference notes B.1/B.2), one per kind of layer.
OFFICIAL_V2_SAMPLE_KEYS = {
    "generator": ["from_rgb.weight", "encode.0.conv1.weight", "encode.0.norm1.weight", "decode.0.norm1.fc.weight",
                  "decode.0.conv2.bias", "to_rgb.0.weight", "to_rgb.2.weight"],
    "mapping_network": ["shared.0.weight", "shared.6.weight", "unshared.2.6.weight"],
    "style_encoder": ["shared.0.weight", "shared.1.conv1.weight", "unshared.2.weight"],
    "discriminator": ["main.0.weight", "main.1.conv1.weight", "main.1.conv2.bias"],
}


# ------------------------------------------------------------------------------------ v1

def v1_nets(c_dim: int = 5, seed: int = 0) -> tuple[G1, D1]:
    s = V1_SIZES
    torch.manual_seed(seed)
    return G1(s["conv"], c_dim, s["repeat"]), D1(s["image"], s["d_conv"], c_dim, s["d_repeat"])


def official_v1_state(G: G1, D: D1, seed: int = 1) -> tuple[OrderedDict, OrderedDict]:
    """G's state dict with running statistics after every norm's affine parameters, D's with the
    official head names."""
    g = torch.Generator().manual_seed(seed)
    gsd = OrderedDict()
    for k, v in G.state_dict().items():
        gsd[k] = v.clone()
        if k.endswith(".bias"):                      # every G bias belongs to a norm (convs have none)
            prefix = k[: -len(".bias")]
            gsd[f"{prefix}.running_mean"] = torch.randn(v.shape, generator=g)
            gsd[f"{prefix}.running_var"] = torch.rand(v.shape, generator=g) + 0.5
            gsd[f"{prefix}.num_batches_tracked"] = torch.tensor(200000)
    dsd = OrderedDict((k.replace("conv_src.", "conv1.").replace("conv_cls.", "conv2."), v.clone())
                      for k, v in D.state_dict().items())
    return gsd, dsd


def save_legacy(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def write_v1(root: Path, c_dim: int = 5, seed: int = 0) -> tuple[G1, D1, Path, Path]:
    G, D = v1_nets(c_dim, seed)
    gsd, dsd = official_v1_state(G, D)
    return G, D, save_legacy(gsd, root / "200000-G.ckpt"), save_legacy(dsd, root / "200000-D.ckpt")


# ------------------------------------------------------------------------------------ v2

def v2_nets(num_domains: int = 3, w_hpf: float = 0.0, img: int | None = None, seed: int = 0) -> dict[str, nn.Module]:
    s = V2_SIZES
    img = img or s["img"]
    torch.manual_seed(seed)
    nets = {"generator": Generator(img, s["style"], s["max_conv"], w_hpf),
            "mapping_network": MappingNetwork(s["latent"], s["style"], num_domains, s["hidden"]),
            "style_encoder": StyleEncoder(img, s["style"], num_domains, s["max_conv"]),
            "discriminator": Discriminator(img, num_domains, s["max_conv"])}
    for net in nets.values():               # non-trivial biases and norm parameters, so every tensor counts
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return nets


def official_order(name: str, sd: dict) -> OrderedDict:
    """The official registration order: the generator's to_rgb comes after encode and decode."""
    if name != "generator":
        return OrderedDict(sd)
    keys = [k for k in sd if not k.startswith("to_rgb.")] + [k for k in sd if k.startswith("to_rgb.")]
    return OrderedDict((k, sd[k]) for k in keys)


def official_v2_state(nets: dict[str, nn.Module], prefix: str = "", with_d: bool = False,
                      fan: FAN | None = None, hpf_filter: torch.Tensor | None = None) -> dict:
    out = {}
    for name, net in nets.items():
        if name == "discriminator" and not with_d:
            continue
        sd = official_order(name, {k: v.clone() for k, v in net.state_dict().items()})
        if name == "generator" and hpf_filter is not None:
            sd["hpf.filter"] = hpf_filter
        out[name] = OrderedDict((prefix + k, v) for k, v in sd.items())
    if fan is not None:
        out["fan"] = OrderedDict((prefix + k, v) for k, v in fan.state_dict().items())
    return out


def official_optims(nets: dict[str, nn.Module], seed: int = 2) -> dict:
    """Adam states as torch writes them: parameters numbered in the official order, a moment per
    parameter whose values identify it (exp_avg filled with its official index)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, net in nets.items():
        params = dict(net.named_parameters())
        order = [k for k in official_order(name, net.state_dict()) if k in params]
        state = {i: {"step": 100000, "exp_avg": torch.full_like(params[k], float(i)),
                     "exp_avg_sq": torch.rand(params[k].shape, generator=g)} for i, k in enumerate(order)}
        out[name] = {"state": state, "param_groups": [{"lr": 1e-6 if name == "mapping_network" else 1e-4,
                                                       "betas": (0.0, 0.99), "eps": 1e-8, "weight_decay": 1e-4,
                                                       "amsgrad": False, "params": list(range(len(order)))}]}
    return out
