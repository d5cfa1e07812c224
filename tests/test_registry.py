"""MLflow pyfunc on names, champion alias only for a better model, and (slow) server + serve."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from stargan.config import load_config
from stargan.files import sha256_file
from stargan.inference import latent, load_model, v1_targets_from_names
from stargan.registry import (TAG_DECISION, TAG_MOVED, TAG_OBJECTIVE, decide, example_input, predict_arrays,
                              read_objective, register_model, signature_for, tracking)
from test_export import make_checkpoint
from tiny_project import env


def test_decide_rules():
    key = "counterfactual/l1"
    assert decide(0.5, None, None, "min", key) == (True, "no champion yet")
    moved, why = decide(0.7, "1", 0.5, "min", key)
    assert not moved and why == f"does not beat the champion: {key}=0.7 vs champion v1 0.5 (min is better)"
    assert decide(0.3, "1", 0.5, "min", key)[0] and decide(0.7, "1", 0.5, "max", key)[0]
    assert not decide(0.5, "1", 0.5, "min", key)[0], "a tie does not move the alias"
    moved, why = decide(None, "2", 0.5, "min", key)
    assert not moved and "no evaluation objective" in why and "champion v2 kept" in why
    assert decide(0.9, "2", None, "min", key)[0]


def test_read_objective_flat_and_nested(tmp_path):
    f = tmp_path / "eval.json"
    f.write_text(json.dumps({"counterfactual/l1_mean": 0.25, "fid": {"latent": 12.5}, "bad": "x"}))
    assert read_objective(f, "counterfactual/l1_mean") == 0.25
    assert read_objective(f, "fid/latent") == read_objective(f, "fid.latent") == 12.5
    assert read_objective(f, "bad") is None and read_objective(f, "missing") is None
    assert read_objective(tmp_path / "none.json", "fid") is None


def test_pyfunc_predict_on_names(tmp_path):
    v1 = load_model(make_checkpoint(tmp_path / "v1", "v1"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = predict_arrays(v1, {"image": x.numpy(), "target": np.array(["Blond_Hair,Male", "rafd/happy"])})
    c = torch.cat([v1_targets_from_names(v1, ["Blond_Hair", "Male"]), v1_targets_from_names(v1, ["rafd/happy"])])
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.float32
    assert np.allclose(out, v1.translate(x, c).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="unknown domain name"):
        predict_arrays(v1, {"image": x.numpy(), "target": np.array(["Purple_Hair", "Male"])})

    v2 = load_model(make_checkpoint(tmp_path / "v2", "v2"))
    ref = torch.rand(2, 3, 16, 16) * 2 - 1
    out = predict_arrays(v2, {"image": x.numpy(), "target": np.array(["Blond_Hair", "Brown_Hair"]),
                              "seed": np.array([5, -1]), "reference": ref.numpy()})
    lat = v2.translate_latent(x[:1], torch.tensor([1]), latent(5, v2.latent_dim))
    rg = v2.translate_reference(x[1:], ref[1:], torch.tensor([2]))
    assert np.allclose(out[0], lat[0].numpy(), atol=1e-6) and np.allclose(out[1], rg[0].numpy(), atol=1e-6)
    assert [s.name for s in signature_for(v2).inputs.inputs] == ["image", "target", "seed", "reference"]


def _eval(root: Path, value: float, checkpoint: Path) -> Path:
    """reports/eval.json as the evaluate stage writes it for ``checkpoint``."""
    f = root / "reports" / "eval.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"counterfactual": {"l1": value, "psnr": 20.0},
                             "info": {"checkpoint_sha256": sha256_file(checkpoint)}}))
    return f


def test_alias_moves_only_when_better(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    ckpt = make_checkpoint(tmp_path, "v1")
    cfg = load_config(tmp_path / "params.yaml", ["export.registered_name=sg-test"])
    first = register_model(ckpt, cfg, tmp_path, eval_json=_eval(tmp_path, 0.5, ckpt))
    assert first.alias_moved and first.version == "1"
    worse = register_model(ckpt, cfg, tmp_path, eval_json=_eval(tmp_path, 0.7, ckpt))
    client = MlflowClient(first.tracking_uri)
    assert not worse.alias_moved
    assert str(client.get_model_version_by_alias("sg-test", "champion").version) == "1"
    tags = client.get_model_version("sg-test", worse.version).tags
    assert tags[TAG_MOVED] == "false" and tags[TAG_DECISION].startswith("does not beat the champion")
    assert float(tags[TAG_OBJECTIVE]) == 0.7
    better = register_model(ckpt, cfg, tmp_path, eval_json=_eval(tmp_path, 0.3, ckpt))
    assert better.alias_moved
    assert str(client.get_model_version_by_alias("sg-test", "champion").version) == better.version
    # Every version was logged into one run (the checkpoint has no training run id: an export run).
    with tracking(first.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model("models:/sg-test@champion")
    ex = example_input(load_model(ckpt), 2)
    assert pyfunc.predict(ex).shape == (2, 3, 16, 16)


def test_a_version_is_never_judged_by_another_checkpoints_evaluation(tmp_path, capsys):
    """reports/eval.json of model A next to checkpoint B (e.g. `stargan export --checkpoint B`):
    its objective is not B's, so B is registered without taking the alias, and the reason says so."""
    from mlflow.tracking import MlflowClient

    from stargan.training.checkpoint import load_state, save_state

    a = make_checkpoint(tmp_path / "a", "v1")
    state = load_state(a)
    next(iter(state.nets["G"].values())).add_(0.5)          # another model with the same config
    b = save_state(state, tmp_path / "b" / "checkpoint.pt")
    cfg = load_config(tmp_path / "a" / "params.yaml", ["export.registered_name=sg-other"])
    first = register_model(a, cfg, tmp_path, eval_json=_eval(tmp_path, 0.5, a))
    second = register_model(b, cfg, tmp_path, eval_json=_eval(tmp_path, 0.1, a))     # 0.1 "beats" 0.5, but is A's
    assert first.alias_moved and not second.alias_moved and second.objective is None
    assert f"is not the evaluation of {b}" in capsys.readouterr().out
    tags = MlflowClient(first.tracking_uri).get_model_version("sg-other", second.version).tags
    assert tags[TAG_DECISION].startswith("no evaluation objective") and TAG_OBJECTIVE not in tags


# ------------------------------------------------------------------------------ servers (slow)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    ckpt = make_checkpoint(root, "v1")
    cfg = load_config(root / "params.yaml")
    reg = register_model(ckpt, cfg, root, eval_json=_eval(root, 0.4, ckpt))
    return root, reg


@pytest.mark.slow
def test_mlflow_server_shows_the_registry(registered):
    root, reg = registered
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root / 'mlruns.db'}",
                             "--default-artifact-root", (root / "mlartifacts").as_uri(), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], cwd=root, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/health", proc)
        models = _get(f"{base}/api/2.0/mlflow/registered-models/search")["registered_models"]
        assert [m["name"] for m in models] == ["stargan"]
        champ = _get(f"{base}/api/2.0/mlflow/registered-models/alias?name=stargan&alias=champion")["model_version"]
        assert str(champ["version"]) == reg.version
        assert {t["key"]: t["value"] for t in champ["tags"]}[TAG_MOVED] == "true"
    finally:
        _stop(proc)
    assert proc.returncode is not None


@pytest.mark.slow
def test_mlflow_models_serve_translates(registered):
    import mlflow

    root, reg = registered
    port = _free_port()
    e = env() | {"MLFLOW_TRACKING_URI": reg.tracking_uri}
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", "models:/stargan@champion", "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)], cwd=root, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/ping", proc)
        x = (np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32) * 2 - 1)
        body = json.dumps({"inputs": {"image": x.tolist(), "target": ["Blond_Hair", "rafd/happy"]}}).encode()
        req = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            served = np.asarray(json.loads(r.read())["predictions"], dtype=np.float32)
    finally:
        _stop(proc)
    assert served.shape == (2, 3, 16, 16)
    assert served.min() >= -1.5 and served.max() <= 1.5 and served.std() > 0
    with tracking(reg.tracking_uri):
        local = mlflow.pyfunc.load_model("models:/stargan@champion").predict(
            {"image": x, "target": np.array(["Blond_Hair", "rafd/happy"])})
    assert np.allclose(served, local, atol=1e-5)
