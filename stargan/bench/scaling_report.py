"""``stargan bench scaling``: the scaling model of docs/scaling.md as JSON, from what was measured.

Inputs, all named in the output:
- the all-reduce plan of each paper setting (:mod:`stargan.bench.scaling`, counted from our nets);
- single-GPU iteration times: the ``stargan bench train`` results (``benchmarks/results/train-*.json``)
  whose device, model, size, batch and setting match. The default training path (``eager``) and
  the fastest variant measured are both used: the faster the step, the more the network shows;
- the whole loader's CPU cost per sample: ``stargan bench data`` results (``data-*.json``, the
  0-worker row of the matching stream and size);
- decode rate per core and bytes per image: :mod:`stargan.bench.decode`, run by this command.

Nothing is invented to fill a gap: a setting with no GPU time gets its communication times and the
step time that 90 % efficiency would need, and says that no time was measured.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from stargan.bench import scaling as sm
from stargan.errors import StarganError

__all__ = ["ScalingInputError", "Setting", "SETTINGS", "step_times", "loader_costs", "build_model", "markdown",
           "bench_scaling"]

DEFAULT_GPUS = (8, 64, 256)
TARGET_SOURCE = "benchmarks/README.md: the GPU throughput issue's targets (v1 >= 2,900 img/s, v2 >= 70 img/s per GPU)"


class ScalingInputError(StarganError, ValueError):
    """A results folder or option the scaling model cannot use."""


@dataclass(frozen=True)
class Setting:
    """A paper setting: its nets, batch, decodes per sample, and how bench results name it."""
    key: str
    title: str
    model: str
    image_size: int
    batch_size: int
    nets: dict = field(hash=False)
    decodes_per_sample: int          # v2 decodes source, reference and second reference
    bench_match: str                 # text the bench JSON's "settings" holds for this setting
    loader_stream: str               # the "stream" of the matching ``stargan bench data`` rows
    target_images_per_s: float


SETTINGS: tuple[Setting, ...] = (
    Setting("v1_celeba", "v1 CelebA 128 px, c_dim 5, conv_dim 64, repeat 6, batch 16, n_critic 5", "v1", 128, 16,
            {"image_size": 128, "c_dim": 5}, 1, "CelebA 5 attributes", "v1 TrainStream", 2900.0),
    Setting("v2_celeba_hq", "v2 CelebA-HQ 256 px, 2 domains, w_hpf 1, style 64, latent 16, max_conv_dim 512, "
            "batch 8", "v2", 256, 8, {"image_size": 256, "num_domains": 2, "w_hpf": 1.0}, 3, "2 domains, w_hpf 1",
            "v2 BalancedStream", 70.0),
    Setting("v2_afhq", "v2 AFHQ 256 px, 3 domains, w_hpf 0, style 64, latent 16, max_conv_dim 512, batch 8", "v2",
            256, 8, {"image_size": 256, "num_domains": 3, "w_hpf": 0.0}, 3, "3 domains, w_hpf 0",
            "v2 BalancedStream", 70.0),
)


def plan(setting: Setting) -> tuple[dict[str, int], list[sm.AllReduce]]:
    """Parameter counts of the trained nets and the all-reduce calls per iteration."""
    if setting.model == "v1":
        nets = sm.v1_nets(**setting.nets)
        calls = sm.v1_allreduces(nets, n_critic=5)
    else:
        nets = sm.v2_nets(**setting.nets)
        calls = sm.v2_allreduces(nets)
    return {k: sm.trainable_numel(m) for k, m in nets.items()}, calls


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def step_times(results: Path, setting: Setting) -> list[dict]:
    """Every matching ``stargan bench train`` variant: file, device, variant, ms per iteration."""
    rows = []
    for path in sorted(Path(results).glob("train-*.json")):
        r = _read(path)
        if not r or not str(r.get("benchmark", "")).startswith("train_step throughput"):
            continue
        if (r.get("model"), r.get("image_size"), r.get("batch_size")) != (setting.model, setting.image_size,
                                                                            setting.batch_size):
            continue
        if setting.bench_match not in str(r.get("settings", "")):
            continue
        env = r.get("environment", {})
        for name, v in r.get("variants", {}).items():
            if isinstance(v.get("ms_per_iter"), (int, float)):
                rows.append({"file": path.name, "device_type": env.get("device_type"), "device": env.get("device"),
                             "variant": name, "ms_per_iter": float(v["ms_per_iter"])})
    return rows


def loader_costs(results: Path, setting: Setting) -> list[dict]:
    """The in-process (0-worker) loader rows of ``stargan bench data`` for this stream and size."""
    rows = []
    for path in sorted(Path(results).glob("data-*.json")):
        r = _read(path)
        if not r or not isinstance(r.get("datasets"), dict):
            continue
        fmt = r.get("shard_config", {}).get("image_format")
        for name, d in r["datasets"].items():
            for row in d.get("loader", []):
                if row.get("workers") == 0 and row.get("stream") == setting.loader_stream \
                        and row.get("image_size") == setting.image_size and "cpu_ms_per_image" in row:
                    rows.append({"file": path.name, "dataset": name, "shard_format": fmt,
                                 "cpu_ms_per_sample": float(row["cpu_ms_per_image"])})
    return rows


def _pick(times: list[dict]) -> list[dict]:
    """The times the tables use: GPU ones if any (else CPU ones, labelled): the fastest eager run
    (the default path) and the fastest variant of all, each once."""
    gpu = [t for t in times if t["device_type"] == "cuda"]
    pool = gpu or times
    if not pool:
        return []
    picks = []
    eager = [t for t in pool if t["variant"] == "eager"]
    if eager:
        picks.append({**min(eager, key=lambda t: t["ms_per_iter"]), "role": "default path (eager, fp32)"})
    best = min(pool, key=lambda t: t["ms_per_iter"])
    if not picks or best["ms_per_iter"] < picks[0]["ms_per_iter"]:
        picks.append({**best, "role": "fastest measured variant"})
    for p in picks:
        p["kind"] = "GPU" if p["device_type"] == "cuda" else "CPU (not a GPU figure)"
    return picks


def _data_needs(setting: Setting, samples_per_s: float, decode: list[dict], loader: list[dict]) -> dict:
    decodes_per_s = samples_per_s * setting.decodes_per_sample
    out: dict = {"samples_per_s": round(samples_per_s, 1), "decodes_per_s": round(decodes_per_s, 1), "formats": {}}
    for row in decode:
        if row["image_size"] == setting.image_size:
            out["formats"][row["format"]] = {
                "decode_cores": round(decodes_per_s / row["decodes_per_s_per_core"], 2),
                "read_MB_per_s": round(decodes_per_s * row["bytes_per_image"] / 1e6, 2)}
    if loader:
        worst = max(loader, key=lambda r: r["cpu_ms_per_sample"])
        out["loader_cores"] = round(samples_per_s * worst["cpu_ms_per_sample"] / 1000, 2)
        out["loader_cost_from"] = f"{worst['file']} ({worst['shard_format']} shards, 0-worker row)"
    return out


def build_model(results: Path, decode: list[dict], decode_source: str, *, gpus: Sequence[int] = DEFAULT_GPUS,
                links: Sequence[sm.Link] = sm.LINKS, machine: dict | None = None) -> dict:
    """The whole model as a JSON-able dict (see the module docstring for where each figure comes from)."""
    if not gpus or min(gpus) < 1:
        raise ValueError(f"GPU counts must be >= 1, got {list(gpus)}")
    out: dict = {
        "generated_by": "stargan bench scaling",
        "model": {
            "allreduce": "ring: T = 2(N-1)/N x S / B + 2(N-1) x alpha per call, S = fp32 gradient bytes of one net",
            "iteration": "t(N) = t(1) + sum of the iteration's all-reduces (no overlap with compute, as the code runs)",
            "efficiency": "t(1) / t(N), per-GPU batch fixed (weak scaling): 1.0 at N = 1",
            "links": [{"name": L.name, "GB_per_s": L.bytes_per_s / 1e9, "latency_us": L.latency_s * 1e6,
                       "max_gpus": L.max_gpus, "note": L.note} for L in links],
            "not_counted": ["the scalar all-reduce of logged metrics every train.log_every steps (a few floats)",
                            "the flat-gradient copies around each all-reduce (cat, divide, copy back: ~6x the "
                            "bytes of memory traffic, ~0.3 ms per iteration for v1 on an H100's ~3 TB/s)",
                            "the one-off weight broadcast at start"],
        },
        "gpus": list(gpus),
        "decode": {"source": decode_source, "rows": decode},
        "machine": machine or {},
        "settings": {},
    }
    for s in SETTINGS:
        params, calls = plan(s)
        per_iter = sum(c.bytes * c.per_iter for c in calls)
        entry: dict = {
            "title": s.title, "parameters": params,
            "allreduces": [{"phase": c.phase, "net": c.net, "numel": c.numel, "bytes": c.bytes,
                            "per_iter": c.per_iter} for c in calls],
            "allreduce_calls_per_iter": round(sum(c.per_iter for c in calls), 3),
            "bytes_per_iter": per_iter,
            "wire_bytes_per_gpu_per_iter": {str(n): round(sm.wire_bytes_per_gpu(per_iter, n)) for n in gpus},
            "comm_ms_per_iter": {}, "compute_ms_for_90pct": {},
        }
        for L in links:
            entry["comm_ms_per_iter"][L.name] = {str(n): _ms(sm.comm_seconds_per_iter(calls, n, L)) if _fits(L, n)
                                                 else None for n in gpus}
            entry["compute_ms_for_90pct"][L.name] = {
                str(n): _ms(sm.compute_for_efficiency(sm.comm_seconds_per_iter(calls, n, L))) if _fits(L, n) else None
                for n in gpus}
        times = step_times(results, s)
        entry["step_times_found"] = times
        entry["step_times_used"] = picks = _pick(times)
        if not picks:
            entry["step_times_note"] = (f"no single-device iteration time in {results} for this setting (a "
                                        f"stargan bench train result of {s.model}, {s.image_size} px, batch "
                                        f"{s.batch_size}, whose settings say '{s.bench_match}')")
        entry["efficiency"] = {}
        for p in picks:
            t = p["ms_per_iter"] / 1e3
            entry["efficiency"][f"{p['file']}:{p['variant']}"] = {
                L.name: {str(n): round(sm.efficiency(t, sm.comm_seconds_per_iter(calls, n, L)), 3) if _fits(L, n)
                         else None for n in gpus} for L in links}
        loader = loader_costs(results, s)
        entry["data"] = {"loader_costs_found": loader, "at": {}}
        rates = [(f"measured: {p['file']}:{p['variant']} ({p['kind']})", s.batch_size / (p["ms_per_iter"] / 1e3))
                 for p in picks] + [(f"target ({TARGET_SOURCE})", s.target_images_per_s)]
        for label, rate in rates:
            entry["data"]["at"][label] = _data_needs(s, rate, decode, loader)
        out["settings"][s.key] = entry
    return out


def _fits(link: sm.Link, n: int) -> bool:
    return link.max_gpus is None or n <= link.max_gpus


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


# ----------------------------------------------------------------------------- markdown

def _cell(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def markdown(model: dict) -> str:
    """The tables of docs/scaling.md, from the JSON (so the doc is pasted, not retyped)."""
    gpus = [str(n) for n in model["gpus"]]
    links = [L["name"] for L in model["model"]["links"]]
    lines = ["| setting | parameters all-reduced | calls / iter | fp32 bytes / iter | sent per GPU / iter at N = "
             + ", ".join(gpus) + " |", "|---|---|---|---|---|"]
    for e in model["settings"].values():
        params = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in e["parameters"].items())
        wire = " / ".join(f"{e['wire_bytes_per_gpu_per_iter'][n] / 1e6:.0f}" for n in gpus)
        lines.append(f"| {e['title']} | {params} | {e['allreduce_calls_per_iter']:g} | "
                     f"{e['bytes_per_iter'] / 1e6:.1f} MB | {wire} MB |")
    lines += ["", "| setting | link | comm ms / iter at N = " + ", ".join(gpus) + " | t(1) for 90 % at N = "
              + ", ".join(gpus) + " |", "|---|---|---|---|"]
    for key, e in model["settings"].items():
        for L in links:
            comm = " / ".join(_cell(e["comm_ms_per_iter"][L][n], ".1f") for n in gpus)
            need = " / ".join(_cell(e["compute_ms_for_90pct"][L][n], ".0f") for n in gpus)
            lines.append(f"| {key} | {L} | {comm} | {need} ms |")
    lines += ["", "| setting | single-device iteration (file: variant) | link | efficiency at N = "
              + ", ".join(gpus) + " |", "|---|---|---|---|"]
    for key, e in model["settings"].items():
        if not e["step_times_used"]:
            lines.append(f"| {key} | none measured | – | – |")
        for p in e["step_times_used"]:
            eff = e["efficiency"][f"{p['file']}:{p['variant']}"]
            for L in links:
                cells = " / ".join(_cell(eff[L][n], ".2f") for n in gpus)
                lines.append(f"| {key} | {p['ms_per_iter']:.1f} ms, {p['kind']} {p['device']} "
                             f"({p['file']}: {p['variant']}) | {L} | {cells} |")
    lines += ["", "| setting | at | samples/s per GPU | decodes/s | JPEG: cores, MB/s | PNG: cores, MB/s | "
              "whole loader cores (JPEG) |", "|---|---|---|---|---|---|---|"]
    for key, e in model["settings"].items():
        for label, d in e["data"]["at"].items():
            f = d["formats"]
            jpg = f"{f['jpeg']['decode_cores']:.2f}, {f['jpeg']['read_MB_per_s']:.1f}" if "jpeg" in f else "–"
            png = f"{f['png']['decode_cores']:.2f}, {f['png']['read_MB_per_s']:.1f}" if "png" in f else "–"
            lines.append(f"| {key} | {label.split(' (')[0]} | {d['samples_per_s']:.0f} | {d['decodes_per_s']:.0f} | "
                         f"{jpg} | {png} | "
                         f"{_cell(d.get('loader_cores'), '.2f')} |")
    lines += ["", "| format | size | bytes / image (mean, min–max) | decodes/s on one core |", "|---|---|---|---|"]
    for r in model["decode"]["rows"]:
        lines.append(f"| {r['format'].upper()}{' q' + str(r['jpeg_quality']) if r['jpeg_quality'] else ''} | "
                     f"{r['image_size']} px | {r['bytes_per_image'] / 1e3:.1f} kB ({r['bytes_min'] / 1e3:.1f}–"
                     f"{r['bytes_max'] / 1e3:.1f}) | {r['decodes_per_s_per_core']:,.0f} |")
    return "\n".join(lines) + "\n"


def bench_scaling(out: Path, *, results: Path = Path("benchmarks/results"), images: Path | None = None,
                  n_images: int = 200, min_seconds: float = 1.0, gpus: Sequence[int] = DEFAULT_GPUS) -> dict:
    """Measure decode here, build the model from ``results`` and write it to ``out`` (atomically)."""
    from stargan.bench import decode as dec
    from stargan.bench.data import machine_info
    from stargan.files import write_json

    if n_images < 1 or min_seconds <= 0:
        raise ScalingInputError(f"--decode-images ({n_images}) and --min-seconds ({min_seconds}) must be positive")
    if not Path(results).is_dir():
        raise ScalingInputError(f"{results}: no such folder; --results names the folder of `stargan bench train` / "
                                "`stargan bench data` JSON files (default benchmarks/results)")
    load = dec.load_average()
    if images is not None:
        photos = dec.photos_from_folder(images, n_images)
        source = f"{len(photos)} photos from {images}, centre square crop resized"
    else:
        photos = dec.synthetic_photos(n_images)
        source = (f"{len(photos)} rendered synthetic faces (no --images given): a stand-in, not a real "
                  "dataset's bytes or decode time")
    rows = dec.measure_decode(photos, min_seconds=min_seconds)
    model = build_model(Path(results), rows, source, gpus=gpus,
                        machine=machine_info() | {"loadavg_1m_before": load})
    write_json(out, model)
    return model
