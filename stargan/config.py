"""One typed, validated loader for ``params.yaml``.

Every knob of every stage lives in one dataclass tree below. Loading walks the YAML against
that tree, so a misspelt key, a wrong type or an out-of-range value fails *before* any work
starts, with one message that names the dotted key, what was given and what is allowed. DVC
passes overrides (``dvc exp run -S train.batch_size=8``) by rewriting params.yaml, and the CLI
passes the same ``key=value`` form to :func:`load_config`, so there is one validation path.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import hashlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stargan.data.sources import LAYOUTS, REGISTRY
from stargan.errors import StarganError

SOURCES = tuple(REGISTRY)      # the dataset sources: one list, stargan/data/sources.py

#: A loss weight set to this string trains with the sweep's best value, read from TUNED_FILE.
TUNED = "tuned"
#: Written by the tune stage beside params.yaml (a DVC params file of the train stage).
TUNED_FILE = "tuned.yaml"
#: Written by the evaluate stage: every number (export reads its objective there), and the few DVC compares.
EVAL_REPORT, HEADLINE = "reports/eval.json", "metrics/headline.json"
#: The loss weights a sweep may search, per model (those set to TUNED are searched).
SWEEPABLE = {"v1": ("lambda_cls", "lambda_rec"), "v2": ("lambda_sty", "lambda_ds")}


class ConfigError(StarganError, ValueError):
    """A params file (or override) that cannot be used; the message says where and how to fix it."""


def _meta(*, choices: tuple | None = None, lo: float | None = None, hi: float | None = None,
          doc: str = "", tunable: bool = False) -> dict:
    return {"choices": choices, "lo": lo, "hi": hi, "doc": doc, "tunable": tunable}


def knob(default: Any, **meta: Any) -> Any:
    """A field with validation metadata (``choices``, ``lo``, ``hi``; ``tunable``: a loss weight that
    may also be the string :data:`TUNED`) and a default."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=_meta(**meta))
    return field(default=default, metadata=_meta(**meta))


# --------------------------------------------------------------------------------------- data

@dataclass
class DatasetSpec:
    """One dataset of the pipeline, named by its key under ``data.datasets``."""
    source: str = knob("synthetic", choices=SOURCES,
                       doc="where raw files come from: the generator, an official URL, or a local path")
    layout: str = knob("celeba", choices=LAYOUTS,
                       doc="on-disk format of the raw files (CelebA lists, RaFD expression folders, "
                           "<split>/<domain>/ folders)")
    path: str | None = knob(None, doc="folder or archive for source=local or rafd")
    url: str | None = knob(None, doc="override of the registry URL")
    sha256: str | None = knob(None, doc="expected sha256 of the downloaded archive")
    attributes: list[str] = knob([], doc="selected attributes/classes, in label order; "
                                         "empty = every class found (rafd/folders)")
    aligned: bool = knob(False, doc="raw images are already aligned (CelebA img_align_celeba, "
                                    "AFHQ): centre crop instead of the landmark transform")
    crop: int = knob(0, lo=0, doc="centre crop size in raw pixels for aligned sets "
                                  "(0 = the dataset's official crop)")
    missing: str = knob("error", choices=("error", "skip"),
                        doc="celeba layout: images the list files name but the image folder lacks fail the "
                            "dataset (error), or are left out and reported (skip: counted and named by the "
                            "download stage and in SOURCE.json; for a partial copy of CelebA). No effect on "
                            "rafd/folders, where the images on disk are the listing")
    follow_links: bool = knob(False, doc="source local folders: copy the targets of symbolic links that point "
                                         "outside the folder (false refuses them; links inside are followed)")


@dataclass
class DataConfig:
    root: str = knob("data", doc="where raw/aligned/shards folders are written")
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)


@dataclass
class SyntheticConfig:
    seed: int = knob(0)
    celeba_images: int = knob(1200, lo=10, doc="images in the CelebA-like set")
    rafd_identities: int = knob(24, lo=2, doc="identities in the RaFD-like set (8 expressions each)")
    image_size: int = knob(96, lo=32, hi=1024, doc="side of the in-the-wild canvas, pixels")
    celeba_smiling: float = knob(0.45, lo=0.0, hi=1.0,
                                 doc="share of CelebA-like faces drawn smiling (real CelebA: 0.48), a label the "
                                     "default does not train on; the default sets 0: G learnt to keep an "
                                     "unlabelled smile, which blocked the cross-dataset expressions (README)")
    clutter: bool = knob(False, doc="random shapes and sensor noise behind the CelebA-like faces (harder to "
                                    "reconstruct); false: a clean two-colour gradient (README 'The default model')")
    test_fraction: float = knob(0.1, lo=0.0, hi=0.5)
    val_fraction: float = knob(0.05, lo=0.0, hi=0.5)


@dataclass
class DownloadConfig:
    timeout_s: float = knob(60.0, lo=1)
    retries: int = knob(5, lo=0, hi=100)
    cache_dir: str | None = knob(None, doc="keep downloaded archives here (default data/downloads)")
    max_extract_bytes: int = knob(200 * 2**30, lo=1,
                                  doc="refuse an archive whose members add up to more (200 GiB; CelebA-HQ "
                                      "and AFHQ are a few GB, CelebA in-the-wild ~10 GB)")
    max_compression_ratio: float = knob(100.0, lo=1,
                                        doc="refuse an archive that unpacks to more than this many times its "
                                            "size (image datasets are ~1:1; above 100 is a decompression bomb)")


@dataclass
class AlignConfig:
    image_size: int = knob(64, lo=16, hi=1024, doc="side of the aligned output, pixels")
    face_fraction: float = knob(0.45, lo=0.1, hi=0.9,
                                doc="eye-to-mouth distance as a fraction of the output side "
                                    "(the canonical template's scale)")
    workers: int = knob(2, lo=1, hi=256, doc="processes")
    min_face: int = knob(24, lo=8, doc="smallest face the detector accepts, pixels")


@dataclass
class ShardConfig:
    image_format: str = knob("png", choices=("png", "jpeg"))
    jpeg_quality: int = knob(95, lo=50, hi=100)
    rows_per_group: int = knob(256, lo=1)
    rows_per_shard: int = knob(8192, lo=1)
    test_fraction: float = knob(0.1, lo=0.0, hi=0.5,
                                doc="for datasets without an official split (RaFD, user folders): "
                                    "share of identities (or images) assigned to test")
    val_fraction: float = knob(0.0, lo=0.0, hi=0.5)
    uri: str | None = knob(None, doc="also publish the shards to this object store URI (s3://, gs://, file://), "
                                     "<uri>/<dataset>/, and train from there (workers on other nodes); "
                                     "credentials from the environment only")


# ----------------------------------------------------------------------------------- models

#: A loss weight the sweep may set: a number, or TUNED.
_LOSS_WEIGHT = dict(lo=0, tunable=True, doc=f"a number, or '{TUNED}': the sweep's best value, from {TUNED_FILE}")

@dataclass
class V1Config:
    g_conv_dim: int = knob(64, lo=1)
    d_conv_dim: int = knob(64, lo=1)
    g_repeat_num: int = knob(6, lo=0)
    d_repeat_num: int = knob(6, lo=1)
    lambda_cls: float | str = knob(1.0, **_LOSS_WEIGHT)
    lambda_rec: float | str = knob(10.0, **_LOSS_WEIGHT)
    lambda_gp: float = knob(10.0, lo=0)
    n_critic: int = knob(5, lo=1)
    g_lr: float = knob(1e-4, lo=0)
    d_lr: float = knob(1e-4, lo=0)
    beta1: float = knob(0.5, lo=0, hi=1)
    beta2: float = knob(0.999, lo=0, hi=1)
    num_iters_decay: int = knob(100000, lo=0, doc="last N iterations decay the LR linearly to 0")
    ema_beta: float = knob(0.0, lo=0, hi=0.99999, doc="EMA of G's weights: 0 = off (the paper); > 0 keeps "
                                                     "G_ema (updated after each G step), which sampling, "
                                                     "evaluation and export then use")
    residual: bool = knob(False, doc="G adds a learned change to its input and starts as the identity "
                                     "(last conv zero-initialised); false = the paper's G, which draws "
                                     "the whole image")
    label_norm: bool = knob(False, doc="G's instance norms also take a scale and shift from the target label "
                                       "(conditional IN), starting as plain IN; false = the paper, where "
                                       "the label enters only as input channels")
    g_edge_kernel: int = knob(7, choices=(1, 3, 5, 7), doc="kernel of G's first and last conv (the paper: 7)")
    random_affine: bool = knob(False, doc="training images also get a small random scale/rotation/shift "
                                          "(stargan/data/transforms.py v1_train_affine); false = the paper's "
                                          "flips only")
    residual_scale: float = knob(1.0, lo=0, doc="with residual: G returns clamp(x + scale * tanh(...)); 2 lets a "
                                                "pixel reach any value from any other (blond hair can turn "
                                                "black), 1 (the first residual G) cannot move one by more than "
                                                "half the range")


@dataclass
class V2Config:
    latent_dim: int = knob(16, lo=1)
    style_dim: int = knob(64, lo=1)
    max_conv_dim: int = knob(512, lo=8)
    mapping_hidden: int = knob(512, lo=8)
    w_hpf: float = knob(0.0, lo=0)
    wing_path: str | None = knob(None, doc="FAN landmark weights (official wing.ckpt), needed when w_hpf>0; "
                                           "read on every build (never copied into checkpoints), so it must "
                                           "stay there for resume, evaluation and inference")
    lambda_reg: float = knob(1.0, lo=0)
    lambda_sty: float | str = knob(1.0, **_LOSS_WEIGHT)
    lambda_ds: float | str = knob(1.0, **_LOSS_WEIGHT)
    lambda_cyc: float = knob(1.0, lo=0)
    ds_iter: int = knob(100000, lo=1, doc="iterations over which lambda_ds decays linearly to 0")
    lr: float = knob(1e-4, lo=0)
    f_lr: float = knob(1e-6, lo=0)
    beta1: float = knob(0.0, lo=0, hi=1)
    beta2: float = knob(0.99, lo=0, hi=1)
    weight_decay: float = knob(1e-4, lo=0)
    ema_beta: float = knob(0.999, lo=0, hi=1)
    randcrop_prob: float = knob(0.5, lo=0, hi=1)
    domains: list[str] = knob([], doc="labels that define the domains; one attribute = "
                                      "{not X, X}; empty = the dataset's classes")


# --------------------------------------------------------------------------------- training

@dataclass
class RayConfig:
    address: str | None = knob(None, doc="Ray cluster to run on (else RAY_ADDRESS, else local)")
    num_workers: int = knob(1, lo=1)
    use_gpu: bool = knob(False)
    cpus_per_worker: float = knob(1.0, lo=0)
    storage_path: str | None = knob(None, doc="shared checkpoint storage (default <repo>/ray_results)")
    max_failures: int = knob(2, lo=-1, doc="worker restarts from the last checkpoint (-1 = forever)")
    resources_timeout_s: float = knob(600.0, lo=0, doc="how long to wait for the cluster to have room for "
                                                       "num_workers workers (at start and after a lost node) "
                                                       "before failing; not elastic")


@dataclass
class MlflowConfig:
    tracking_uri: str | None = knob(None, doc="default sqlite:///<repo>/mlruns.db; env MLFLOW_TRACKING_URI wins")
    artifact_root: str = knob("mlartifacts")
    experiment: str = knob("stargan")


@dataclass
class TrainConfig:
    model: str = knob("v1", choices=("v1", "v2"))
    datasets: list[str] = knob([], doc="keys of data.datasets to train on; several = joint "
                                       "training with the mask vector (v1)")
    image_size: int = knob(64, lo=16, hi=1024)
    batch_size: int = knob(16, lo=1, doc="per worker")
    num_iters: int = knob(200000, lo=1)
    seed: int = knob(0)
    loader_workers: int = knob(0, lo=0, hi=64)
    log_every: int = knob(10, lo=1)
    sample_every: int = knob(1000, lo=1)
    checkpoint_every: int = knob(10000, lo=1)
    output_dir: str = knob("models/train", doc="final checkpoint + samples")
    init_from: str | None = knob(None, doc="a checkpoint (e.g. from `stargan import-official`) a new run starts "
                                           "from: its nets, EMA nets and optimizer states where it has them, at "
                                           "step 0 with this config's learning rates (fine-tuning); unused once the "
                                           "run has a checkpoint of its own to resume")
    amp_bf16: bool = knob(False, doc="bf16 autocast (GPU); penalties stay fp32")
    channels_last: bool = knob(False)
    tf32: bool = knob(False, doc="CUDA: TF32 matmuls/convs and cuDNN autotuning (sets global torch.backends flags)")
    fast_ops: bool = knob(False, doc="layout-keeping instance norm/AdaIN, reshape-mean 2x2 pooling, fused Adam, "
                                     "batched passes where the maths allows (see benchmarks/README.md)")
    compile: bool = knob(False, doc="torch.compile the passes that need no double backward (G; v2 also F, E, D on fakes)")
    compile_blocks: bool = knob(False, doc="regional compile instead of compile: torch.compile each residual block "
                                           "of G (v2: and E), one compiled graph per block shape reused by every "
                                           "block of that shape, so warm-up compiles a few blocks, not whole nets; "
                                           "D stays eager (its penalty needs a double backward). Not with compile")
    cuda_graphs: bool = knob(False, doc="v1: run the D step and the G step from static buffers, each captured once "
                                        "as a CUDA graph and replayed (fused capturable Adam, LR as a device "
                                        "tensor, NaN guard on the device: a non-finite step updates no weights "
                                        "and is reported); on a CPU device or several workers it runs the same "
                                        "static step uncaptured, with one log line (stargan/training/v1_graph.py)")
    v1: V1Config = field(default_factory=V1Config)
    v2: V2Config = field(default_factory=V2Config)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class EvaluateConfig:
    batch_size: int = knob(64, lo=1)
    num_outs_per_domain: int = knob(10, lo=1)
    fid_real_split: str = knob("test", choices=("test", "train"))
    weights_dir: str | None = knob(None, doc="folder with pt_inception-2015-12-05 and LPIPS weights")
    classifier_iters: int = knob(2000, lo=1)
    max_images: int = knob(0, lo=0, doc="0 = all test images")
    classifier_width: int = knob(64, lo=1, doc="base channels of the attribute classifier (the judge); "
                                               "classifier_arch resnet18 at 64 is ResNet-18")
    classifier_arch: str = knob("small", choices=("small", "resnet18"),
                                doc="the judge's network: resnet18 (He et al.'s, the v1 paper's RaFD judge; with "
                                    "classifier_width 64) for real faces, small (a 3x3 stem that keeps resolution "
                                    "below 96 px) for the synthetic default (stargan/evaluation/classifier_nets.py)")
    judge_min_accuracy: float = knob(0.9, lo=0.0, hi=1.0,
                                     doc="a target accuracy is flagged judge_ok: false in reports/eval.json when "
                                         "the judge's balanced accuracy on real test images of its label is "
                                         "lower: 0.9 = TPR - FPR >= 0.8 (stargan/evaluation/judge.py)")
    classifier_batch_size: int = knob(32, lo=1)
    classifier_lr: float = knob(1e-3, lo=0)
    classifier_augment: bool = knob(True, doc="train the judge with small random affine, colour and blur "
                                              "augmentation (stargan/data/transforms.py judge_train): without "
                                              "it, it fails on faces framed unlike its training set (the "
                                              "cross-dataset targets); false = flips only")
    download_weights: bool = knob(True, doc="fetch missing FID/LPIPS weights from their official URLs")
    grid_images: int = knob(8, lo=1, doc="source images (rows) in the sample grids")


@dataclass
class TuneConfig:
    num_samples: int = knob(4, lo=1)
    iters_per_trial: int = knob(60, lo=1)
    # [low, high] searched for each loss weight that train.v1/v2 sets to 'tuned' (log-uniform)
    lambda_cls: list[float] = knob([0.5, 2.0])
    lambda_rec: list[float] = knob([5.0, 20.0])
    lambda_sty: list[float] = knob([0.5, 2.0])
    lambda_ds: list[float] = knob([0.5, 2.0])
    objective: str = knob("counterfactual_l1", doc="key of stargan.evaluation.quick_objective's result that "
                                                  "ranks the trials (e.g. counterfactual_l1, objective)")
    mode: str = knob("min", choices=("min", "max"))
    reports_per_trial: int = knob(3, lo=1, doc="validation points per trial (ASHA rungs are these)")
    val_images: int = knob(32, lo=1, doc="validation images per objective evaluation")
    max_concurrent: int = knob(2, lo=1)
    grace_period: int = knob(1, lo=1, doc="ASHA: reports before a trial may be stopped")
    reduction_factor: int = knob(2, lo=2)
    use_ray_train: bool = knob(False, doc="each trial a Ray Train TorchTrainer run (DDP workers, for clusters); "
                                          "false = the worker loop in the trial's process (fast on one box)")
    cpus: int = knob(4, lo=1, doc="logical CPUs a local Ray instance declares (over-subscription is fine)")


@dataclass
class ExportConfig:
    output_dir: str = knob("models/export")
    registered_name: str = knob("stargan")
    alias: str = knob("champion")
    parity_atol: float = knob(1e-4, lo=0)
    onnx_exporter: str = knob("dynamo", choices=("dynamo", "legacy"),
                              doc="dynamo (torch.export + onnxscript) or the deprecated TorchScript exporter")
    latency_reps: int = knob(5, lo=1)
    register: bool = knob(True, doc="log the pyfunc to MLflow and register it")
    objective: str = knob("counterfactual/l1", doc="key in reports/eval.json that decides the champion "
                                                  "(nested sections joined by '/')")
    objective_mode: str = knob("min", choices=("min", "max"))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none): tells a checkpoint's config apart."""
        d = self.to_dict()
        if sections:
            d = {k: _dig(d, k) for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _dig(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


# ------------------------------------------------------------------------------- validation

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of name -> {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {type(None): "null", float: "number", int: "integer", str: "string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str, meta: dict) -> Any:
    if meta.get("tunable"):
        if value == TUNED:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number or '{TUNED}' (the sweep's best value, from "
                              f"{TUNED_FILE}), got {value!r}")
        tp = float
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, meta)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of the keys {_field_names(tp)}, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{key}[{i}]", {}) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        _, inner = typing.get_args(tp)
        return {str(k): _convert(v, inner, f"{key}.{k}", {}) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: {value!r} is below the minimum {lo}" + (f" (allowed: {lo}..{hi})" if hi is not None else ""))
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {value!r} is above the maximum {hi}" + (f" (allowed: {lo}..{hi})" if lo is not None else ""))
    return value


def _field_names(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


#: Keys that existed once, and what replaces them.
REMOVED = {"tune.enabled": f"the sweep runs for the loss weights set to '{TUNED}' (train.v1.lambda_cls, ...); "
                           "set them to numbers to train without a sweep"}


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if f"{prefix}.{k}" in REMOVED:
            raise ConfigError(f"{prefix}.{k}: no longer a setting: {REMOVED[f'{prefix}.{k}']}")
        if k not in fields:
            near = difflib.get_close_matches(str(k), fields, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key.{hint} Allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], f"{prefix}.{name}" if prefix else name, dict(f.metadata))
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    for name, spec in cfg.data.datasets.items():
        if spec.source == "local" and not spec.path:
            raise ConfigError(f"data.datasets.{name}.path: required when source is 'local' "
                              "(a folder or a .zip/.tar archive)")
    for name in cfg.train.datasets:
        if name not in cfg.data.datasets:
            raise ConfigError(f"train.datasets: '{name}' is not a dataset; defined in data.datasets: "
                              f"{', '.join(cfg.data.datasets) or '(none)'}")
    _check_image_size(cfg.train)
    if cfg.train.compile and cfg.train.compile_blocks:
        raise ConfigError("train.compile_blocks: regional compilation replaces train.compile; set one of them")
    if cfg.train.cuda_graphs and cfg.train.model != "v1":
        raise ConfigError("train.cuda_graphs: the CUDA-graph step is built for StarGAN v1 only (v2 is GPU-bound, "
                          "not launch-bound); set it false for train.model: v2")
    if cfg.train.model == "v2" and len(cfg.train.datasets) > 1:
        raise ConfigError("train.datasets: StarGAN v2 trains on one dataset; the mask vector "
                          "(joint training) is a v1 feature. Keep one dataset or set train.model: v1")
    for key in ("lambda_cls", "lambda_rec", "lambda_sty", "lambda_ds"):
        rng = getattr(cfg.tune, key)
        if len(rng) != 2 or rng[0] > rng[1]:
            raise ConfigError(f"tune.{key}: expected [low, high] with low <= high, got {rng}")


def _check_image_size(t: TrainConfig) -> None:
    """The sizes the networks can be built for (else training dies in the model constructor)."""
    size = t.image_size
    if t.model == "v1":
        # G: two stride-2 downsamplings undone by two stride-2 upsamplings; D: d_repeat_num of them.
        step = max(4, 2 ** t.v1.d_repeat_num)
        if size % step:
            ok = [s for s in range(step, 4 * step + 1, step) if s >= 16][:3]
            raise ConfigError(f"train.image_size: {size} does not fit StarGAN v1 with train.v1.d_repeat_num="
                              f"{t.v1.d_repeat_num}: it must be a multiple of {step} (e.g. "
                              f"{', '.join(map(str, ok))}); or lower train.v1.d_repeat_num")
    elif size < 16 or size & (size - 1):
        raise ConfigError(f"train.image_size: {size} does not fit StarGAN v2: it must be a power of two "
                          ">= 16 (16, 32, 64, 128, 256, ...)")


def tuned_keys(cfg: Config) -> list[str]:
    """Dotted keys of the trained model's loss weights set to :data:`TUNED` in params."""
    model = cfg.train.model
    section = getattr(cfg.train, model)
    return [f"train.{model}.{k}" for k in SWEEPABLE[model] if getattr(section, k) == TUNED]


def with_loss_weights(cfg: Config, values: dict[str, float]) -> Config:
    """``cfg`` with the trained model's loss weights replaced (``{"lambda_rec": 87.8, ...}``)."""
    model = cfg.train.model
    section = dataclasses.replace(getattr(cfg.train, model), **{k: float(v) for k, v in values.items()})
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **{model: section}))


def resolve_tuned(cfg: Config, tuned_file: str | Path) -> Config:
    """``cfg`` with every loss weight set to :data:`TUNED` replaced by its value in ``tuned_file``
    (written by the tune stage). What trains is then a plain number everywhere downstream (the
    worker, the checkpoint, MLflow); a weight given as a number in params is never touched."""
    keys = tuned_keys(cfg)
    if not keys:
        return cfg
    path = Path(tuned_file)
    fix = (f"run the sweep first (`dvc repro tune` or `stargan tune`), or set {', '.join(keys)} "
           "to numbers in params.yaml")
    if not path.exists():
        raise ConfigError(f"{', '.join(keys)}: set to '{TUNED}' but {path} does not exist; {fix}")
    raw = _read_mapping(path, f"; {fix}")
    values = {}
    for key in keys:
        try:
            value = _dig(raw, key)
        except (KeyError, TypeError):
            raise ConfigError(f"{key}: set to '{TUNED}' but {path} has no value for it; {fix}") from None
        if value == TUNED:
            raise ConfigError(f"{path}: {key} is '{TUNED}'; it must hold the sweep's number. {fix}")
        values[key.rsplit(".", 1)[1]] = _convert(value, float, f"{path}: {key}", {"lo": 0})
    return with_loss_weights(cfg, values)


def loss_weights_summary(cfg: Config, tuned: list[str]) -> str:
    """'lambda_cls=0.9203 (tuned.yaml), lambda_rec=5 (params)': what trains and where it came from."""
    model = cfg.train.model
    section = getattr(cfg.train, model)
    return ", ".join(f"{k}={getattr(section, k):.6g} ({TUNED_FILE if f'train.{model}.{k}' in tuned else 'params'})"
                     for k in SWEEPABLE[model])


def parse_override(text: str) -> tuple[str, Any]:
    """``train.batch_size=8`` -> ("train.batch_size", 8); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.batch_size=8")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _apply_override(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{p}' is not a section")
    node[parts[-1]] = value


def config_from_dict(raw: dict | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = json.loads(json.dumps(raw or {}))
    for text in overrides:
        _apply_override(raw, *parse_override(text))
    cfg = _build(Config, raw, "")
    _cross_checks(cfg)
    return cfg


def _read_mapping(path: Path, fix: str = "") -> dict:
    """The top-level mapping of a YAML file; one-line :class:`ConfigError` when it is not one."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())}){fix}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level{fix}")
    return raw


def load_config(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a params file; every problem raises :class:`ConfigError` naming the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such params file (run from the repository root, or pass --params)")
    raw = _read_mapping(path)
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
