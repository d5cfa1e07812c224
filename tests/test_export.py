"""Export: TorchScript + ONNX parity against eager for v1 and v2, dynamic batch, loud failures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stargan.config import config_from_dict
from stargan.export import ExportError, export_model, graphs_for, load_exported
from stargan.inference import load_model
from stargan.training.checkpoint import TrainState, save_state
from tiny_project import REPO, TINY, draw_untrained_change, env, merge

V2_DOMAINS = ["Black_Hair", "Blond_Hair", "Brown_Hair"]
CELEBA = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]


def tiny_params(kind: str) -> dict:
    over = {"train": {"model": kind, "datasets": ["celeba", "rafd"] if kind == "v1" else ["celeba"],
                      "v2": {"domains": V2_DOMAINS}}}
    return merge(yaml.safe_load((REPO / "params.yaml").read_text()), merge(TINY, over))


def make_checkpoint(root: Path, kind: str, seed: int = 0) -> Path:
    """A freshly initialised (untrained) tiny model in the one checkpoint format: no data needed."""
    torch.manual_seed(seed)
    params = tiny_params(kind)
    cfg = config_from_dict(params)
    if kind == "v1":
        from stargan.training.labels import LabelLayout
        from stargan.training.nets import build_v1

        rafd = list(params["data"]["datasets"]["rafd"]["attributes"])
        layout = LabelLayout([("celeba", CELEBA, "multi"), ("rafd", rafd, "onehot")])
        nets, _ = build_v1(cfg.train, layout, torch.device("cpu"))
        draw_untrained_change(nets.G)
        state = TrainState(step=1, model="v1", config=cfg.to_dict(), nets={"G": nets.G.state_dict()},
                           extra={"layout": layout.to_dict()})
    else:
        from stargan.training.nets import build_v2

        nets, _ = build_v2(cfg.train, len(V2_DOMAINS), torch.device("cpu"))
        state = TrainState(step=1, model="v2", config=cfg.to_dict(),
                           nets={f"{n}_ema": getattr(nets, n).state_dict() for n in ("G", "F", "E")},
                           extra={"label_names": CELEBA, "label_kind": "multi"})
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return save_state(state, root / "models" / "train" / "checkpoint.pt")


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_export_parity_and_dynamic_batch(tmp_path, kind):
    model = load_model(make_checkpoint(tmp_path, kind))
    out = tmp_path / "export"
    report = export_model(model, out, parity_atol=1e-4, exporter="legacy", latency_reps=1)
    names = ["generator"] if kind == "v1" else ["latent", "reference"]
    assert sorted(report["graphs"]) == sorted(names)
    assert json.loads((out / "export.json").read_text())["parity_max"] == report["parity_max"] <= 1e-4
    for name in names:
        lat = report["graphs"][name]["latency_ms"]
        assert {f"{rt}/batch{b}" for rt in ("eager", "torchscript", "onnxruntime") for b in (1, 8)} == set(lat)
        assert (out / f"{name}.pt").exists() and (out / f"{name}.onnx").exists()
    # Exported at batch 2; run here at batch 3 with fresh inputs.
    import onnxruntime as ort

    g = torch.Generator().manual_seed(123)
    for spec in graphs_for(model):
        inputs = spec.make_inputs(3, g)
        ref = spec.module(*inputs)
        ts = torch.jit.load(str(out / f"{spec.name}.pt"))(*inputs)
        sess = ort.InferenceSession(str(out / f"{spec.name}.onnx"), providers=["CPUExecutionProvider"])
        onnx_out = sess.run(None, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})[0]
        assert ts.shape == ref.shape == (3, 3, model.image_size, model.image_size)
        assert torch.allclose(ts, ref, atol=1e-5)
        assert np.abs(onnx_out - ref.numpy()).max() < 1e-4


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_exported_folder_translates_like_the_checkpoint(tmp_path, kind):
    ckpt = make_checkpoint(tmp_path, kind)
    model = load_model(ckpt)
    export_model(model, tmp_path / "export", parity_atol=1e-4, exporter="legacy", latency_reps=1)
    exported = load_exported(tmp_path / "export")
    assert exported.kind == kind and exported.target_names() == model.target_names()
    x = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    if kind == "v1":
        c = torch.zeros(2, model.layout.c_dim)
        c[:, 1] = 1
        assert torch.allclose(exported.translate(x, c), model.translate(x, c), atol=1e-5)
    else:
        y, z = torch.tensor([0, 2]), torch.randn(2, model.latent_dim)
        assert torch.allclose(exported.translate_latent(x, y, z), model.translate_latent(x, y, z), atol=1e-5)
        assert torch.allclose(exported.translate_reference(x, x.flip(0), y),
                              model.translate_reference(x, x.flip(0), y), atol=1e-5)


def test_broken_onnx_output_fails_loudly_and_exports_nothing(tmp_path, monkeypatch):
    import stargan.export as ex

    model = load_model(make_checkpoint(tmp_path, "v1"))
    real = ex.run_onnx
    monkeypatch.setattr(ex, "run_onnx", lambda *a: real(*a) + 0.01)
    with pytest.raises(ExportError, match=r"parity check failed.*generator onnxruntime batch 2: max abs diff 0\.01"):
        export_model(model, tmp_path / "export", parity_atol=1e-4, exporter="legacy", latency_reps=1)
    assert not (tmp_path / "export").exists()
    assert not list(tmp_path.glob(".export-*")), "temporary export folder left behind"


def test_export_stage_exits_nonzero_with_a_clear_message(tmp_path):
    make_checkpoint(tmp_path, "v1")
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "export.py"), "-S", "export.parity_atol=0",
                           "-S", "export.onnx_exporter=legacy", "-S", "export.register=false",
                           "-S", "export.latency_reps=1"], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("[export] error: parity check failed") and "export.parity_atol 0" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models" / "export").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_dynamo_exporter_parity(tmp_path, kind):
    model = load_model(make_checkpoint(tmp_path, kind))
    report = export_model(model, tmp_path / "export", parity_atol=1e-4, exporter="dynamo", latency_reps=1)
    assert all(g["onnx_exporter"] == "dynamo" for g in report["graphs"].values())
    assert report["parity_max"] <= 1e-4
