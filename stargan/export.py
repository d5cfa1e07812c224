"""Export the inference generator to TorchScript and ONNX, checked against eager PyTorch.

What is exported (the networks :func:`stargan.inference.load_model` returns; EMA nets for v2):

=========  ====================  ======================================  ==========================
model      graph                 inputs                                  output
=========  ====================  ======================================  ==========================
v1         ``generator``         x float32 [B,3,S,S] in [-1,1],          float32 [B,3,S,S]
                                 c float32 [B,c_dim] (model label)
v2         ``latent``            x, z float32 [B,latent_dim],            G(x, F(z, y))
                                 y int64 [B] (domain index)
v2         ``reference``         x, x_ref float32 [B,3,S,S], y int64 [B] G(x, E(x_ref, y))
=========  ====================  ======================================  ==========================

Every graph has a dynamic batch axis (exported at ``batch=2``, checked at 2 and 3). Files:
``<graph>.pt`` (TorchScript, ``torch.jit.load``), ``<graph>.onnx``, ``model.json`` (what a
consumer needs to build the inputs: kind, label layout / domains, image size, the config) and
``export.json`` (parity, and latency in ms per batch: best of ``export.latency_reps`` runs after a
warm-up, on this machine's CPU threads). Everything is written to a temporary folder and
moved into place only when every parity check passed, so a failed export leaves no artifacts
that look valid.

ONNX exporter: ``dynamo`` (``torch.onnx.export(dynamo=True)``, needs onnxscript) is the default
because the TorchScript-based ``legacy`` exporter is deprecated; measured on the tiny models on
2 CPU cores, dynamo takes 7-9 s per graph and legacy 0.2-0.4 s with the same parity (~3e-6). If
dynamo fails on a model, the export falls back to legacy (opset 18) and says so in export.json.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from stargan.config import config_from_dict
from stargan.data.domains import DomainMap
from stargan.errors import StarganError
from stargan.files import staged_dir, write_json
from stargan.inference import Model, V1Model, V2Model
from stargan.training.labels import LabelLayout

EXPORTERS = ("dynamo", "legacy")
MODEL_JSON = "model.json"
REPORT_JSON = "export.json"


class ExportError(StarganError, RuntimeError):
    """The export cannot be trusted (parity failed) or could not be produced; the message says why."""


# ------------------------------------------------------------------------------ graphs

class V1Graph(nn.Module):
    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.G(x, c)


class V2LatentGraph(nn.Module):
    def __init__(self, G: nn.Module, F: nn.Module):
        super().__init__()
        self.G, self.F = G, F

    def forward(self, x: Tensor, z: Tensor, y: Tensor) -> Tensor:
        return self.G(x, self.F(z, y))


class V2ReferenceGraph(nn.Module):
    def __init__(self, G: nn.Module, E: nn.Module):
        super().__init__()
        self.G, self.E = G, E

    def forward(self, x: Tensor, x_ref: Tensor, y: Tensor) -> Tensor:
        return self.G(x, self.E(x_ref, y))


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    input_names: list[str]
    make_inputs: Callable[[int, torch.Generator], tuple[Tensor, ...]]


def graphs_for(model: Model) -> list[GraphSpec]:
    s = model.image_size

    def image(b: int, g: torch.Generator) -> Tensor:
        return torch.rand(b, 3, s, s, generator=g) * 2 - 1

    if isinstance(model, V1Model):
        c_dim = model.layout.c_dim
        return [GraphSpec("generator", V1Graph(model.G).eval(), ["x", "c"],
                          lambda b, g: (image(b, g), (torch.rand(b, c_dim, generator=g) > 0.5).float()))]
    if isinstance(model, V2Model):
        k, zd = model.domains.num_domains, model.latent_dim
        return [
            GraphSpec("latent", V2LatentGraph(model.G, model.F).eval(), ["x", "z", "y"],
                      lambda b, g: (image(b, g), torch.randn(b, zd, generator=g), torch.randint(0, k, (b,), generator=g))),
            GraphSpec("reference", V2ReferenceGraph(model.G, model.E).eval(), ["x", "x_ref", "y"],
                      lambda b, g: (image(b, g), image(b, g), torch.randint(0, k, (b,), generator=g))),
        ]
    raise ExportError(f"cannot export a {type(model).__name__}")


def model_metadata(model: Model) -> dict:
    """``model.json``: everything a consumer of the exported graphs needs besides the graphs."""
    meta = {"kind": model.kind, "step": model.step, "image_size": model.image_size,
            "target_names": model.target_names(), "config": model.config.to_dict(),
            "graphs": {g.name: g.input_names for g in graphs_for(model)}}
    if isinstance(model, V1Model):
        meta["layout"] = model.layout.to_dict()
        meta["c_dim"] = model.layout.c_dim
    else:
        meta["domains"] = {"names": model.domains.names, "label_kind": model.domains.label_kind,
                           "columns": model.domains.columns, "binary": model.domains.binary}
        meta["latent_dim"] = model.latent_dim
    return meta


# ----------------------------------------------------------------------------- runtimes

def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(session, names: list[str], inputs: tuple[Tensor, ...]) -> np.ndarray:
    """One ORT forward pass (a module-level function so tests can break it on purpose)."""
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]


def _export_onnx(spec: GraphSpec, example: tuple[Tensor, ...], path: Path, exporter: str) -> str:
    """Write ``path``; returns the exporter that produced it (dynamo may fall back to legacy)."""
    if exporter == "dynamo":
        try:
            from torch.export import Dim

            batch = Dim("batch")
            # "torchvision is not installed. Skipping torchvision::nms" x4: the exporter's op table
            # lists torchvision's ops; our graphs use none of them.
            logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(spec.module, example, str(path), input_names=spec.input_names,
                                  output_names=["out"], dynamo=True, verbose=False,
                                  dynamic_shapes={n: {0: batch} for n in spec.input_names})
            return "dynamo"
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the legacy one, say so
            print(f"[export] {spec.name}: dynamo ONNX export failed ({type(e).__name__}: {str(e)[:200]}); "
                  "falling back to the legacy exporter (opset 18)", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(spec.module, example, str(path), input_names=spec.input_names, output_names=["out"],
                          dynamo=False, opset_version=18,
                          dynamic_axes={n: {0: "batch"} for n in [*spec.input_names, "out"]})
    return "legacy"


def _trace(spec: GraphSpec, example: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # TracerWarning on shape checks: batch stays dynamic (checked below)
        return torch.jit.trace(spec.module, example, check_trace=False)


def _latency_ms(fn: Callable[[], object], reps: int) -> float:
    fn()    # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(min(times), 3)      # best of reps: the least disturbed by other load on the box


# -------------------------------------------------------------------------------- export

def export_model(model: Model, out_dir: str | Path, *, parity_atol: float, exporter: str = "dynamo",
                 export_batch: int = 2, check_batches: tuple[int, ...] = (2, 3),
                 latency_batches: tuple[int, ...] = (1, 8), latency_reps: int = 5, seed: int = 0) -> dict:
    """Export every graph of ``model`` to ``out_dir``; returns the report written to export.json.

    Raises :class:`ExportError` (and leaves ``out_dir`` untouched) when a TorchScript or ONNX
    output differs from eager PyTorch by more than ``parity_atol`` on any checked batch.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"export.onnx_exporter: {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    with staged_dir(Path(out_dir)) as tmp:
        report = _export_into(model, tmp, parity_atol, exporter, export_batch, check_batches,
                              latency_batches, latency_reps, seed)
        write_json(tmp / MODEL_JSON, model_metadata(model))
        write_json(tmp / REPORT_JSON, report)
    return report


def _export_into(model: Model, d: Path, atol: float, exporter: str, export_batch: int,
                 check_batches: tuple[int, ...], latency_batches: tuple[int, ...], reps: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    report: dict = {"kind": model.kind, "step": model.step, "image_size": model.image_size,
                    "parity_atol": atol, "export_batch": export_batch, "threads": torch.get_num_threads(),
                    "graphs": {}}
    failures: list[str] = []
    for spec in graphs_for(model):
        entry: dict = {"inputs": spec.input_names, "parity": {}, "latency_ms": {}}
        example = spec.make_inputs(export_batch, g)
        t = time.perf_counter()
        traced = _trace(spec, example)
        traced.save(str(d / f"{spec.name}.pt"))
        entry["torchscript_export_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        entry["onnx_exporter"] = _export_onnx(spec, example, d / f"{spec.name}.onnx", exporter)
        entry["onnx_export_s"] = round(time.perf_counter() - t, 3)
        ts = torch.jit.load(str(d / f"{spec.name}.pt"))
        sess = _ort_session(d / f"{spec.name}.onnx")
        with torch.no_grad():
            for b in check_batches:
                inputs = spec.make_inputs(b, g)
                ref = spec.module(*inputs).numpy()
                for runtime, out in (("torchscript", ts(*inputs).numpy()),
                                     ("onnxruntime", run_onnx(sess, spec.input_names, inputs))):
                    out = np.asarray(out)
                    diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
                    entry["parity"][f"{runtime}/batch{b}"] = diff
                    if not diff <= atol:
                        what = (f"max abs diff {diff:.3g}" if out.shape == ref.shape
                                else f"shape {out.shape} instead of {ref.shape}")
                        failures.append(f"{spec.name} {runtime} batch {b}: {what} > export.parity_atol {atol:g}")
            for b in latency_batches:
                inputs = spec.make_inputs(b, g)
                feeds = {n: t.numpy() for n, t in zip(spec.input_names, inputs)}
                entry["latency_ms"][f"eager/batch{b}"] = _latency_ms(lambda: spec.module(*inputs), reps)
                entry["latency_ms"][f"torchscript/batch{b}"] = _latency_ms(lambda: ts(*inputs), reps)
                entry["latency_ms"][f"onnxruntime/batch{b}"] = _latency_ms(lambda: sess.run(None, feeds), reps)
        entry["parity_max"] = max(entry["parity"].values())
        entry["bytes"] = {"torchscript": (d / f"{spec.name}.pt").stat().st_size,
                          "onnx": (d / f"{spec.name}.onnx").stat().st_size}
        report["graphs"][spec.name] = entry
    if failures:
        raise ExportError("parity check failed, nothing exported: " + "; ".join(failures))
    report["parity_max"] = max(e["parity_max"] for e in report["graphs"].values())
    return report


# --------------------------------------------------------------------------- consumers

def load_exported(export_dir: str | Path) -> Model:
    """An exported folder -> a :class:`V1Model` / :class:`V2Model` running the TorchScript graphs.

    The result has the same API as :func:`stargan.inference.load_model`'s, so ``stargan
    translate`` and the pyfunc treat a checkpoint and an export alike.
    """
    d = Path(export_dir)
    meta_path = d / MODEL_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{d}: not an exported model folder ({MODEL_JSON} missing; "
                                "run `stargan export` or `dvc repro export`)")
    meta = json.loads(meta_path.read_text())
    cfg = config_from_dict(meta["config"])
    if meta["kind"] == "v1":
        G = torch.jit.load(str(d / "generator.pt")).eval()
        return V1Model(G=G, layout=LabelLayout.from_dict(meta["layout"]), config=cfg, step=meta["step"])
    dom = meta["domains"]
    return ExportedV2Model(G=None, F=None, E=None, config=cfg, step=meta["step"],
                           domains=DomainMap(dom["names"], dom["label_kind"], dom["columns"], dom["binary"]),
                           latent_graph=torch.jit.load(str(d / "latent.pt")).eval(),
                           reference_graph=torch.jit.load(str(d / "reference.pt")).eval())


@dataclass
class ExportedV2Model(V2Model):
    latent_graph: torch.jit.ScriptModule | None = None
    reference_graph: torch.jit.ScriptModule | None = None

    @torch.no_grad()
    def translate_latent(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return self.latent_graph(x, z, y)

    @torch.no_grad()
    def translate_reference(self, x: Tensor, x_ref: Tensor, y: Tensor) -> Tensor:
        return self.reference_graph(x, x_ref, y)
