"""MLflow pyfunc on names, champion alias only for a better model, and (slow) server + serve."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stargan.config import load_config
from stargan.files import sha256_file
from stargan.data.align import align_face
from stargan.data.imageio import decode_image, encode_png
from stargan.inference import latent, load_model, to_tensor, v1_targets_from_names
from stargan.visualize import to_uint8
from stargan.registry import (TAG_DECISION, TAG_MOVED, TAG_OBJECTIVE, decide, example_input, predict_images,
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


def _b64(rgb: np.ndarray) -> str:
    return base64.b64encode(encode_png(rgb)).decode()


def _face(seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)


def _unb64(text: str) -> torch.Tensor:
    return to_tensor(decode_image(base64.b64decode(text)))


def test_pyfunc_translates_images_by_target_name(tmp_path):
    """PNG/JPEG in (any size: centre square, resized), PNG out: exactly our translation of the crop."""
    v1 = load_model(make_checkpoint(tmp_path / "v1", "v1"))
    faces = [_face(0), _face(1, size=50)]
    rows = pd.DataFrame({"image": [_b64(f) for f in faces], "target": ["Blond_Hair,Male", "rafd/happy"]})
    out = predict_images(v1, rows)
    x = torch.cat([to_tensor(align_face(f, 16, crop=0).image) for f in faces])
    c = torch.cat([v1_targets_from_names(v1, ["Blond_Hair", "Male"]), v1_targets_from_names(v1, ["rafd/happy"])])
    expect = to_tensor(to_uint8(v1.translate(x, c))[0])      # what a PNG of the output holds
    got = _unb64(out["image"][0])
    assert list(out.columns) == ["image"] and got.shape == (1, 3, 16, 16)
    assert torch.allclose(got, expect[:1], atol=1e-6)
    with pytest.raises(ValueError, match="unknown domain name"):
        predict_images(v1, rows.assign(target=["Purple_Hair", "Male"]))
    with pytest.raises(ValueError, match=r"image \(row 1\): not base64"):
        predict_images(v1, rows.assign(image=[rows["image"][0], "not an image!"]))

    v2 = load_model(make_checkpoint(tmp_path / "v2", "v2"))
    ref = _face(2)
    out = predict_images(v2, pd.DataFrame({"image": [_b64(faces[0])] * 3, "target": ["Blond_Hair", "Brown_Hair", "Blond_Hair"],
                                           "seed": [5, -1, None], "reference": [None, _b64(ref), None]}))
    x0 = to_tensor(align_face(faces[0], 16, crop=0).image)
    lat = v2.translate_latent(x0, torch.tensor([1]), latent(5, v2.latent_dim))
    rg = v2.translate_reference(x0, to_tensor(align_face(ref, 16, crop=0).image), torch.tensor([2]))
    zero = v2.translate_latent(x0, torch.tensor([1]), latent(0, v2.latent_dim))
    for i, t in enumerate((lat, rg, zero)):
        assert torch.allclose(_unb64(out["image"][i]), to_tensor(to_uint8(t)[0]), atol=1e-6), i
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
    pred = pyfunc.predict(ex)
    assert len(pred) == 2 and _unb64(pred["image"][1]).shape == (1, 3, 16, 16)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="unknown domain name.*this model knows: celeba/Black_Hair"):
        pyfunc.predict(ex.assign(target=["Purple_Hair", "Male"]))


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
        faces = [_face(3, size=64), _face(4, size=48)]
        rows = [{"image": _b64(f), "target": t} for f, t in zip(faces, ["Blond_Hair", "rafd/happy"])]
        body = json.dumps({"dataframe_records": rows}).encode()
        req = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            served = [p["image"] for p in json.loads(r.read())["predictions"]]
        with tracking(reg.tracking_uri):      # the example MLflow stores with every version works as it is
            example = Path(mlflow.artifacts.download_artifacts("models:/stargan@champion")) / "serving_input_example.json"
        ex = urllib.request.Request(f"{base}/invocations", data=example.read_bytes(),
                                    headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(ex, timeout=60) as r:
            assert len(json.loads(r.read())["predictions"]) == 1
        bad = urllib.request.Request(f"{base}/invocations", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"dataframe_records": [{**rows[0], "target": "Purple_Hair"}]}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=60)
        error = json.loads(e.value.read())
    finally:
        _stop(proc)
    assert e.value.code == 400 and "unknown domain name(s) Purple_Hair; this model knows:" in error["message"]
    pngs = [base64.b64decode(p) for p in served]
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs), "PNG out"
    assert [decode_image(p).shape for p in pngs] == [(16, 16, 3)] * 2
    with tracking(reg.tracking_uri):
        local = mlflow.pyfunc.load_model("models:/stargan@champion").predict(pd.DataFrame(rows))
    assert list(local["image"]) == served


@pytest.mark.slow
def test_translate_models_uri_from_another_folder(registered, tmp_path):
    """`stargan translate --model models:/stargan@champion` from a folder that is not the project:
    with --params it finds the project's store; without, it says what to do and leaves no empty
    mlflow database behind (it used to create one in the working folder)."""
    root, _ = registered
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    (elsewhere / "face.png").write_bytes(encode_png(_face(7, size=48)))
    e = {k: v for k, v in env().items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "stargan.cli", "translate", "--model", "models:/stargan@champion", "--input",
           "face.png", "--target", "Blond_Hair", "--no-align", "--out", "out"]
    found = subprocess.run(cmd + ["--params", str(root / "params.yaml")], cwd=elsewhere, env=e, capture_output=True,
                           text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    assert decode_image(elsewhere / "out" / "face_Blond_Hair.png").shape == (16, 16, 3)
    lost = subprocess.run(cmd, cwd=elsewhere, env=e, capture_output=True, text=True, timeout=300)
    assert lost.returncode == 2
    assert lost.stderr.strip().startswith("stargan translate: error: models:/stargan@champion: no project here")
    assert "--params <project>/params.yaml or set MLFLOW_TRACKING_URI" in lost.stderr
    assert not list(elsewhere.glob("*.db")), "no empty MLflow database left behind"
