"""A tiny but real project directory for end-to-end tests: the shipped params.yaml with small
sizes, and the download -> align -> shard stages run as the user runs them (their scripts)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "synthetic": {"celeba_images": 160, "rafd_identities": 8, "image_size": 64},   # 8 x 4 expressions: 32 RaFD-like
    "align": {"image_size": 32, "workers": 1},
    "shard": {"rows_per_group": 16},
    "train": {"image_size": 16, "batch_size": 4, "num_iters": 6, "log_every": 2, "sample_every": 3,
              "checkpoint_every": 3,
              # fixed loss weights: no sweep unless a test sets them to 'tuned'
              "v1": {"g_conv_dim": 8, "d_conv_dim": 8, "g_repeat_num": 1, "d_repeat_num": 4, "n_critic": 2,
                     "num_iters_decay": 3, "lambda_cls": 1.0, "lambda_rec": 10.0},
              "v2": {"style_dim": 8, "latent_dim": 4, "max_conv_dim": 16, "mapping_hidden": 16, "ds_iter": 6},
              "ray": {"max_failures": 2, "cpus_per_worker": 1.0}},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
             DVC_NO_ANALYTICS="1", NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    return e


def write_params(root: Path, overrides: dict | None = None) -> Path:
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), merge(TINY, overrides or {}))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(root: Path, stage: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / f"{stage}.py"), "--params", "params.yaml", *extra],
                          cwd=root, env=env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{stage} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build_data(root: Path, overrides: dict | None = None) -> Path:
    """params.yaml + data/raw, data/aligned, data/shards for the tiny config."""
    write_params(root, overrides)
    for stage in ("download", "align", "shard"):
        run_stage(root, stage)
    return root


def draw_untrained_change(G) -> None:
    """An untrained residual v1 G (``train.v1.residual``, the shipped default) is exactly the identity:
    its last conv starts at zero. Tests of *untrained* nets that need a real image-to-image map
    (export parity, cycle error) redraw that conv with torch's default conv init."""
    import torch

    last = [m for m in G.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.reset_parameters()
