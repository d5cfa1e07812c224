"""``stargan import-official``: official checkpoint files -> our checkpoint, export and registered model.

What comes out is an ordinary model of ours, so every consumer works on it unchanged:

- ``<out>/checkpoint.pt``: the one checkpoint format (:mod:`stargan.training.checkpoint`). Its
  config describes the networks (sizes read from the files' tensor shapes), the dataset they were
  trained on and, for v2, the FAN weights file; its ``extra`` holds the label layout / domains and
  an ``official`` record (preset, licence, and per file: name, URL, bytes, sha256). With the
  official ``_nets.ckpt`` / ``_optims.ckpt`` it also holds the trained nets and the optimizer
  states, so ``train.init_from`` can fine-tune from the official state.
- ``<out>/wing.pt``: the FAN weights, when a ``w_hpf > 0`` model's file carries them (the official
  code saves its landmark network in every checkpoint) and no ``--wing`` file was given.
- ``<out>/export/``: TorchScript + ONNX graphs, parity-checked (:func:`stargan.registry.export_and_register`),
  and an MLflow registered model version in the project's store with the source URL, the
  licence and each file's sha256 as tags, and the licence in the version description.
- ``<out>/import.json``: this report.

Before anything is written the converted weights are loaded back the way every consumer loads
them (:func:`stargan.inference.model_from_state`) and run once on a fixed input.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stargan.config import Config, DatasetSpec, config_from_dict
from stargan.files import sha256_file, write_json
from stargan.inference import model_from_state
from stargan.models.fan import load_fan
from stargan.models.v1 import Discriminator as D1, Generator as G1
from stargan.models.v2 import Discriminator, Generator, MappingNetwork, StyleEncoder
from stargan.official import convert
from stargan.official.convert import OfficialFormatError
from stargan.official.sources import V2_LICENCE_URL, ModelSource, get_model_source
from stargan.tracking import RUN_ID_KEY, Tracker
from stargan.training.checkpoint import ARCH_DEFAULTS, TrainState, arch_overrides, load_state, save_state
from stargan.training.labels import LabelLayout

IMPORT_JSON = "import.json"
WING_FILE = "wing.pt"
#: Version tags of a registered official model.
TAG_SOURCE, TAG_LICENCE, TAG_PRESET = "stargan.source_url", "stargan.licence", "stargan.official_model"


@dataclass
class ImportResult:
    checkpoint: Path
    model: str
    preset: str | None
    arch: dict
    files: dict[str, dict]                          # role -> {name, path, bytes, sha256, url}
    dropped: dict[str, int] = field(default_factory=dict)
    nets: list[str] = field(default_factory=list)   # checkpoint nets (G_ema, ..., D)
    optims: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    export: dict | None = None
    registered: dict | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["checkpoint"] = str(self.checkpoint)
        return d


def _describe(path: Path, url: str | None) -> dict:
    return {"name": path.name, "path": str(path.resolve()), "bytes": path.stat().st_size,
            "sha256": sha256_file(path), "url": url}


def _step_of(path: Path) -> int:
    """The iteration in an official file name (``200000-G.ckpt``, ``100000_nets_ema.ckpt``), else 0."""
    m = re.match(r"(\d+)[-_]", path.name)
    return int(m.group(1)) if m else 0


def _base_config(base: Config, source: ModelSource, dataset: str) -> dict:
    """The config the imported model is described by: the project's params (``base``) with the
    model's architecture, its dataset entry (added when the project has none of that name) and the
    official loss weights of its model kind."""
    raw = base.to_dict()
    if dataset not in raw["data"]["datasets"] and source.name == "custom":
        raise OfficialFormatError(f"--dataset: {dataset or '(none given)'} is not a data.datasets entry of the params "
                                  f"({', '.join(raw['data']['datasets']) or 'none'}); a model that is not a known "
                                  "official one must name the dataset entry it belongs to")
    if dataset not in raw["data"]["datasets"]:
        raw["data"]["datasets"][dataset] = dataclasses.asdict(DatasetSpec(
            source=source.dataset, layout=source.layout, aligned=True,
            attributes=list(source.label_names) if source.model == "v1" else []))
    t = raw["train"]
    t.update(model=source.model, datasets=[dataset], image_size=source.image_size)
    t[source.model].update(source.loss_weights)
    return raw


# ------------------------------------------------------------------------------------ v1

def _import_v1(source: ModelSource, files: dict[str, Path], raw: dict, image_size: int | None
               ) -> tuple[Config, dict, dict, dict[str, int], dict]:
    g_path, d_path = files["generator"], files.get("discriminator")
    g = convert.state_dict(convert.read(g_path, "generator"), g_path, "generator")
    d = convert.state_dict(convert.read(d_path, "discriminator"), d_path, "discriminator") if d_path else None
    arch = convert.v1_arch(g, d, g_path, d_path)
    labels = len(source.label_names)
    if arch.c_dim != labels or (arch.cls_dim is not None and arch.cls_dim != labels):
        raise OfficialFormatError(f"generator {g_path}: a label of {arch.c_dim} (D: {arch.cls_dim}) for {source.name}'s "
                                  f"{labels} labels ({', '.join(source.label_names)}); pick the model it belongs to "
                                  "(--model) or give --labels")
    size = arch.image_size or image_size or source.image_size
    if image_size and arch.image_size and image_size != arch.image_size:
        raise OfficialFormatError(f"discriminator {d_path}: its classifier head is for {arch.image_size} px images, "
                                  f"not --image-size {image_size}")
    G = G1(arch.g_conv_dim, arch.c_dim, arch.g_repeat_num)
    nets, dropped = {}, {}
    nets["G"], stats = convert.v1_generator(g, G, g_path)
    dropped["generator running statistics"] = len(stats)
    v1 = raw["train"]["v1"]
    # the paper's G, whatever the project trains (the shipped params: a residual, label-normed G):
    # its later-added architecture knobs at the values checkpoints from before them are read as
    v1.update({k.removeprefix("train.v1."): val for k, val in ARCH_DEFAULTS.items() if k.startswith("train.v1.")})
    v1.update(g_conv_dim=arch.g_conv_dim, g_repeat_num=arch.g_repeat_num)
    if d is not None:
        nets["D"] = convert.v1_discriminator(d, D1(size, arch.d_conv_dim, arch.cls_dim or arch.c_dim, arch.d_repeat_num),
                                             d_path)
        v1.update(d_conv_dim=arch.d_conv_dim, d_repeat_num=arch.d_repeat_num)
    else:       # no D given: describe the official one (model.py defaults), which fine-tuning would build
        v1.update(d_conv_dim=64, d_repeat_num=6)
    raw["train"]["image_size"] = size
    arch.image_size = size
    dataset = raw["train"]["datasets"][0]
    extra = {"layout": LabelLayout([(dataset, source.label_names, source.label_kind)]).to_dict()}
    return config_from_dict(raw), nets, extra, dropped, arch.to_dict()


# ------------------------------------------------------------------------------------ v2

def _w_hpf(arch: convert.V2Arch, source: ModelSource, given: float | None, path: Path) -> float:
    if not arch.high_pass:
        if given:
            raise OfficialFormatError(f"nets_ema {path}: --w-hpf {given:g}, but the generator has no high-pass "
                                      "block (a w_hpf 0 model, such as AFHQ's)")
        return 0.0
    w = arch.w_hpf_in_file or given or source.w_hpf or 1.0      # 1: the official CelebA-HQ setting
    if given and arch.w_hpf_in_file and abs(given - arch.w_hpf_in_file) > 1e-6:
        raise OfficialFormatError(f"nets_ema {path}: its hpf.filter says w_hpf {arch.w_hpf_in_file:g}, not --w-hpf {given:g}")
    return float(w)


def _fan_file(fan_sd: dict | None, files: dict[str, Path], out_dir: Path, path: Path) -> Path:
    """The FAN weights file a ``w_hpf > 0`` model will read: ``--wing``, else the copy its own
    checkpoint carries, written to ``<out>/wing.pt``. Loaded strictly here, so a bad one fails now."""
    if "wing" in files:
        wing = files["wing"].resolve()
    elif fan_sd is not None:
        wing = out_dir.resolve() / WING_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = wing.with_name(f".{wing.name}.tmp")
        torch.save(fan_sd, tmp)
        tmp.replace(wing)
    else:
        raise OfficialFormatError(f"nets_ema {path}: a w_hpf > 0 generator needs the FAN landmark weights, and this "
                                  "file carries none: pass the official wing.ckpt with --wing")
    load_fan(wing)
    return wing


def _import_v2(source: ModelSource, files: dict[str, Path], raw: dict, out_dir: Path, w_hpf: float | None
               ) -> tuple[Config, dict, dict, dict, dict]:
    ema_path = files["nets_ema"]
    ema, fan = convert.split_v2(convert.read(ema_path, "nets_ema"), ema_path, "nets_ema",
                                ("generator", "mapping_network", "style_encoder"))
    arch = convert.v2_arch(ema, ema_path)
    if arch.num_domains != len(source.label_names):
        raise OfficialFormatError(f"nets_ema {ema_path}: {arch.num_domains} domains, but {source.name} has "
                                  f"{len(source.label_names)} ({', '.join(source.label_names)}); pick the model it "
                                  "belongs to (--model) or name its domains (--labels)")
    w = _w_hpf(arch, source, w_hpf, ema_path)
    a = arch

    def modules() -> dict[str, torch.nn.Module]:
        return {"generator": Generator(a.img_size, a.style_dim, a.max_conv_dim, w if a.high_pass else 0.0),
                "mapping_network": MappingNetwork(a.latent_dim, a.style_dim, a.num_domains, a.hidden_dim),
                "style_encoder": StyleEncoder(a.img_size, a.style_dim, a.num_domains, a.max_conv_dim),
                "discriminator": Discriminator(a.img_size, a.num_domains, a.max_conv_dim)}

    own = modules()
    nets = {f"{convert.V2_NETS[k]}_ema": convert.v2_net(sd, own[k], k, ema_path, "nets_ema", w)
            for k, sd in ema.items() if k != "discriminator"}
    if "discriminator" in ema:
        nets["D"] = convert.v2_net(ema["discriminator"], own["discriminator"], "discriminator", ema_path, "nets_ema", w)
    optims: dict = {}
    if "nets" in files:
        nets_path = files["nets"]
        trained, fan_nets = convert.split_v2(convert.read(nets_path, "nets"), nets_path, "nets", tuple(convert.V2_NETS))
        fan = fan if fan is not None else fan_nets
        for k, sd in trained.items():
            nets[convert.V2_NETS[k]] = convert.v2_net(sd, own[k], k, nets_path, "nets", w)
        if "optims" in files:
            optims = _optims(files["optims"], trained, own)
    elif "optims" in files:
        raise OfficialFormatError(f"optims {files['optims']}: optimizer states need the trained nets they belong to: "
                                  "pass the _nets.ckpt of the same iteration with --nets")
    v2 = raw["train"]["v2"]
    v2.update(latent_dim=a.latent_dim, style_dim=a.style_dim, max_conv_dim=a.max_conv_dim,
              mapping_hidden=a.hidden_dim, w_hpf=w, domains=[],
              wing_path=str(_fan_file(fan, files, out_dir, ema_path)) if w > 0 else None)
    raw["train"]["image_size"] = a.img_size
    names = list(source.label_names)
    extra = {"domains": names, "dataset": raw["train"]["datasets"][0], "label_names": names, "label_kind": "onehot"}
    return config_from_dict(raw), nets, optims, extra, arch.to_dict() | {"w_hpf": w}


def _optims(path: Path, trained: dict[str, dict], own: dict[str, torch.nn.Module]) -> dict:
    obj = convert.read(path, "optims")
    if not isinstance(obj, dict):
        raise OfficialFormatError(f"optims {path}: expected the official dict of optimizer states, found "
                                  f"{type(obj).__name__}")
    obj = convert.strip_module(obj)
    missing = [k for k in convert.V2_NETS if k not in obj]
    unknown = [k for k in obj if k not in convert.V2_NETS]
    if missing or unknown:
        raise OfficialFormatError(f"optims {path}: missing optimizers: {', '.join(missing) or '-'}; unexpected "
                                  f"entries: {', '.join(map(str, unknown)) or '-'}")
    return {convert.V2_NETS[k]: convert.remap_optimizer(obj[k], list(trained[k]), own[k], path, f"optims [{k}]")
            for k in convert.V2_NETS}


# -------------------------------------------------------------------------------- driver

def _custom_source(model: str, labels: list[str], image_size: int | None, dataset: str | None) -> ModelSource:
    """A model the registry does not list (e.g. one trained with the official code on other data)."""
    if not labels:
        raise OfficialFormatError("--labels: a model that is not a known official one needs its label (v1) or "
                                  "domain (v2) names, in the order it was trained with")
    return ModelSource(name="custom", model=model, dataset=dataset or "", layout="folders" if model == "v2" else "celeba",
                       label_names=tuple(labels), label_kind="multi" if model == "v1" else "onehot",
                       image_size=image_size or (128 if model == "v1" else 256), licence="unknown (not a registry model)",
                       files={})


def _smoke_test(state: TrainState) -> None:
    """Load the converted state the way every consumer does and translate one fixed image."""
    model = model_from_state(state)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, model.image_size, model.image_size, generator=g) * 2 - 1
    with torch.no_grad():
        if model.kind == "v1":
            y = model.translate(x, torch.zeros(1, model.layout.c_dim))
        else:
            y = model.translate_latent(x, torch.zeros(1, dtype=torch.int64), torch.randn(1, model.latent_dim, generator=g))
    if not torch.isfinite(y).all():
        raise OfficialFormatError("the imported model produces non-finite images: a corrupted file")


def _description(source: ModelSource, files: dict[str, dict]) -> str:
    lines = [f"Official {'StarGAN v2' if source.model == 'v2' else 'StarGAN'} model '{source.name}' "
             f"({source.doc or 'not a registry model'}), imported with `stargan import-official`.",
             "Files: " + "; ".join(f"{f['name']} (sha256 {f['sha256']}, {f['bytes']} bytes)" for f in files.values()),
             f"Licence: {source.licence}."]
    if source.model == "v2":
        lines.append(f"The StarGAN v2 pretrained weights are licensed CC BY-NC 4.0 ({V2_LICENCE_URL}): "
                     "non-commercial use only, with attribution to Choi et al., CVPR 2020 (clovaai/stargan-v2).")
    return "\n".join(lines)


def import_official(files: dict[str, Path], out_dir: Path, base: Config, repo_root: Path, *,
                    preset: str | None = None, model: str | None = None, labels: list[str] | None = None,
                    dataset: str | None = None, image_size: int | None = None, w_hpf: float | None = None,
                    step: int | None = None, export: bool = True, register: bool = True,
                    registered_name: str | None = None) -> ImportResult:
    """Convert the official ``files`` (role -> path: ``generator``/``discriminator`` for v1;
    ``nets_ema`` [+ ``nets`` [+ ``optims``]] [+ ``wing``] for v2) into ``out_dir`` (module docstring).

    ``preset`` names a :data:`stargan.official.sources.MODELS` entry (domains, dataset, licence,
    URL); without one, ``model`` and ``labels`` say what the files are. ``base`` is the project's
    config (its data, tracking and export settings), ``dataset`` the ``data.datasets`` key the
    model belongs to (default: the preset's dataset)."""
    out_dir = Path(out_dir)
    source = get_model_source(preset) if preset else _custom_source(model or "", labels or [], image_size, dataset)
    if model and model != source.model:
        raise OfficialFormatError(f"--model-kind {model}: {source.name} is a StarGAN {source.model} model")
    if labels and preset:
        source = dataclasses.replace(source, label_names=tuple(labels))
    main_role = "generator" if source.model == "v1" else "nets_ema"
    if main_role not in files:
        flag = "--generator" if source.model == "v1" else "--nets-ema"
        raise OfficialFormatError(f"{flag}: required for a StarGAN {source.model} model")
    allowed = {"v1": {"generator", "discriminator"}, "v2": {"nets_ema", "nets", "optims", "wing"}}[source.model]
    if set(files) - allowed:
        raise OfficialFormatError(f"{', '.join(sorted(set(files) - allowed))}: not files of a StarGAN {source.model} model")
    described = {role: _describe(Path(p), source.url if role == main_role else None) for role, p in files.items()}
    dataset = dataset or source.dataset
    raw = _base_config(base, source, dataset)
    optims: dict = {}
    if source.model == "v1":
        cfg, nets, extra, dropped, arch = _import_v1(source, files, raw, image_size)
    else:
        cfg, nets, optims, extra, arch = _import_v2(source, files, raw, out_dir, w_hpf)
        dropped = {}
    extra["official"] = {"model": source.name, "licence": source.licence, "files": described}
    state = TrainState(step=_step_of(files[main_role]) if step is None else step, model=source.model,
                       config=cfg.to_dict(), nets=nets, optims=optims, extra=extra)
    _smoke_test(state)
    result = ImportResult(checkpoint=out_dir.resolve() / "checkpoint.pt", model=source.model,
                          preset=preset, arch=arch, files=described, dropped=dropped, nets=sorted(nets),
                          optims=sorted(optims), overrides=arch_overrides(state))
    if register:
        tracker = Tracker.for_config(cfg, repo_root)
        state.extra[RUN_ID_KEY] = tracker.start_run(
            f"import-official-{source.name}", params={"official": {k: f["sha256"] for k, f in described.items()}},
            tags=_version_tags(source, described) | {"stargan.kind": "import-official"})
    save_state(state, result.checkpoint)
    load_state(result.checkpoint)                  # what was written reads back
    if export or register:
        from stargan.registry import export_and_register   # mlflow, onnx: only when asked for

        name = registered_name or f"stargan-{source.name}"
        ecfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, output_dir=str(out_dir.resolve() / "export"),
                                                                  registered_name=name))
        report, reg = export_and_register(ecfg, repo_root, result.checkpoint, register=register,
                                          tags=_version_tags(source, described),
                                          description=_description(source, described))
        result.export = {"dir": ecfg.export.output_dir, "parity_max": report["parity_max"]}
        result.registered = reg.to_dict() if reg is not None else None
        if register:
            tracker.attempt("close the import run", lambda: tracker.finish(state.extra[RUN_ID_KEY]))
    write_json(out_dir / IMPORT_JSON, result.to_dict())
    return result


def _version_tags(source: ModelSource, files: dict[str, dict]) -> dict[str, str]:
    tags = {TAG_PRESET: source.name, TAG_LICENCE: source.licence_tag if source.name != "custom" else "unknown",
            TAG_SOURCE: next((f["url"] for f in files.values() if f["url"]), None) or "local file"}
    tags |= {f"stargan.sha256.{role}": f["sha256"] for role, f in files.items()}
    return tags


def summary(result: ImportResult) -> dict[str, Any]:
    """What ``stargan import-official`` prints."""
    out = {"checkpoint": str(result.checkpoint), "model": result.model, "preset": result.preset,
           "nets": result.nets, "optimizers": result.optims, "files": {k: {"sha256": f["sha256"], "bytes": f["bytes"]}
                                                                       for k, f in result.files.items()},
           "architecture": result.arch, "dropped": result.dropped, "params_overrides": result.overrides}
    if result.export:
        out["export"] = result.export
    if result.registered:
        out["registered"] = {k: result.registered[k] for k in ("name", "version", "model_uri", "tracking_uri")}
    return out
