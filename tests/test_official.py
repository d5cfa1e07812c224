"""`stargan import-official`: files in the official formats (tests/official_files.py: our own random
networks, written the way the official code writes them) become an ordinary model of ours whose
translations equal the source networks' exactly; a mismatched, damaged or unsafe file is refused
naming what is wrong; the import registers a tagged MLflow version that `stargan translate`,
`mlflow models serve` and the ONNX export use; and training starts from the imported state."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml

from official_files import (OFFICIAL_V2_SAMPLE_KEYS, V1_SIZES, official_optims, official_order,
                            official_v1_discriminator_keys, official_v1_generator_keys, official_v1_state,
                            official_v2_state, save_legacy, v1_nets, v2_nets, write_v1)
from stargan.cli import main as cli_main
from stargan.config import Config, config_from_dict
from stargan.files import sha256_file
from stargan.inference import MaskedGenerator, load_model
from stargan.models.fan import FAN
from stargan.models.v1 import Discriminator as D1
from stargan.official.convert import OfficialFormatError
from stargan.official.importer import TAG_LICENCE, TAG_SOURCE, import_official
from stargan.official.sources import MODELS
from stargan.training.checkpoint import load_state
from test_fan import random_fan
from tiny_project import env

RAFD = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]


def _import(files: dict, out: Path, **kw):
    return import_official(files, out, Config(), out.parent, export=False, register=False, **kw)


def _x(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(5)) * 2 - 1


class Payload:
    """Any non-tensor object: a file holding one needs pickled code to load."""


# --------------------------------------------------------------------------------- v1

def test_v1_files_import_and_translate_exactly_as_the_source(tmp_path):
    G, D, g_path, d_path = write_v1(tmp_path / "official")
    assert list(torch.load(g_path, weights_only=True)) == official_v1_generator_keys(V1_SIZES["repeat"])
    assert list(torch.load(d_path, weights_only=True)) == official_v1_discriminator_keys(V1_SIZES["d_repeat"])

    res = _import({"generator": g_path, "discriminator": d_path}, tmp_path / "out", preset="v1-celeba-128")
    norms = 3 + 2 * V1_SIZES["repeat"] + 2
    assert res.dropped == {"generator running statistics": 3 * norms}
    assert res.arch["image_size"] == V1_SIZES["image"] and res.arch["c_dim"] == 5

    model = load_model(res.checkpoint)
    x, c = _x(), torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(model.translate(x, c), G.eval()(x, c))
    assert model.target_names() == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
    state = load_state(res.checkpoint)
    D2 = D1(V1_SIZES["image"], V1_SIZES["d_conv"], 5, V1_SIZES["d_repeat"])
    D2.load_state_dict(state.nets["D"])
    for a, b in zip(D2(x), D(x)):
        assert torch.equal(a, b)
    files = state.extra["official"]["files"]
    assert files["generator"]["sha256"] == sha256_file(g_path) and files["discriminator"]["bytes"] == d_path.stat().st_size
    assert files["generator"]["url"] == MODELS["v1-celeba-128"].url and state.step == 200000


def test_v1_import_describes_the_papers_generator_whatever_the_projects_g(tmp_path):
    """A project whose params train the residual, label-normed G (the shipped default) imports an
    official G as what it is, the paper's: the checkpoint says so, and it translates as the source."""
    from stargan.config import config_from_dict

    G, D, g_path, d_path = write_v1(tmp_path / "official")
    raw = Config().to_dict()
    raw["train"]["v1"].update(residual=True, residual_scale=2.0, label_norm=True, g_edge_kernel=3)
    res = import_official({"generator": g_path, "discriminator": d_path}, tmp_path / "out", config_from_dict(raw),
                          tmp_path, export=False, register=False, preset="v1-celeba-128")
    v1 = load_state(res.checkpoint).config["train"]["v1"]
    assert (v1["residual"], v1["residual_scale"], v1["label_norm"], v1["g_edge_kernel"]) == (False, 1.0, False, 7)
    x, c = _x(), torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(load_model(res.checkpoint).translate(x, c), G.eval()(x, c))


def test_refusals_name_what_is_wrong(tmp_path, capsys):
    G, D = v1_nets()
    gsd, dsd = official_v1_state(G, D)
    d = tmp_path / "bad"

    bad = OrderedDict(gsd)
    bad["main.9.main.0.w"] = bad.pop("main.9.main.0.weight")                # a renamed tensor
    bad["main.3.weight"] = torch.zeros(3, 3, 4, 4)                          # a wrong shape
    with pytest.raises(OfficialFormatError) as e:
        _import({"generator": save_legacy(bad, d / "g1.ckpt")}, d / "o1", preset="v1-celeba-128")
    msg = str(e.value)
    assert "missing keys: main.9.main.0.weight" in msg and "unexpected keys: main.9.main.0.w" in msg
    assert "shape mismatches: main.3.weight (3, 3, 4, 4) in the file, (16, 8, 4, 4) in the network" in msg

    ours = OrderedDict((k, v) for k, v in D.state_dict().items())          # our head names are not the official ones
    g_ok = save_legacy(gsd, d / "g.ckpt")
    with pytest.raises(OfficialFormatError, match=r"missing keys: conv1\.weight, conv2\.weight; unexpected keys: "
                                                  r"conv_src\.weight, conv_cls\.weight"):
        _import({"generator": g_ok, "discriminator": save_legacy(ours, d / "d.ckpt")}, d / "o2", preset="v1-celeba-128")

    nan = OrderedDict(gsd)
    nan["main.0.weight"] = nan["main.0.weight"].clone()
    nan["main.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(OfficialFormatError, match=r"non-finite values \(NaN/inf\) in main\.0\.weight"):
        _import({"generator": save_legacy(nan, d / "g2.ckpt")}, d / "o3", preset="v1-celeba-128")

    torch.save({"G": Payload()}, d / "pickled.ckpt")
    with pytest.raises(OfficialFormatError, match="refused: not a weights-only torch file"):
        _import({"generator": d / "pickled.ckpt"}, d / "o4", preset="v1-celeba-128")
    (d / "cut.ckpt").write_bytes(g_ok.read_bytes()[: g_ok.stat().st_size // 2])
    with pytest.raises(OfficialFormatError, match="refused: not a weights-only torch file"):
        _import({"generator": d / "cut.ckpt"}, d / "o5", preset="v1-celeba-128")

    nets = v2_nets(num_domains=2)
    ema = official_v2_state(nets)
    del ema["mapping_network"]
    torch.save(ema, d / "ema.ckpt")
    with pytest.raises(OfficialFormatError, match="missing networks: mapping_network"):
        _import({"nets_ema": d / "ema.ckpt"}, d / "o6", preset="v2-celeba-hq")
    torch.save(official_v2_state(nets), d / "ema2.ckpt")
    with pytest.raises(OfficialFormatError, match="2 domains, but v2-afhq has 3"):
        _import({"nets_ema": d / "ema2.ckpt"}, d / "o7", preset="v2-afhq")
    torch.save(official_optims(nets), d / "optims.ckpt")
    with pytest.raises(OfficialFormatError, match="need the trained nets they belong to"):
        _import({"nets_ema": d / "ema2.ckpt", "optims": d / "optims.ckpt"}, d / "o8", preset="v2-celeba-hq")
    with pytest.raises(OfficialFormatError, match="--dataset: mine is not a data.datasets entry"):
        _import({"nets_ema": d / "ema2.ckpt"}, d / "o8", model="v2", labels=["day", "night"], dataset="mine")
    assert not any((d / f"o{i}" / "checkpoint.pt").exists() for i in range(1, 9)), "a refused file writes nothing"

    # The command says it in one line, with exit status 2.
    code = cli_main(["import-official", "--params", str(d / "none.yaml"), "--model", "v1-celeba-128",
                     "--generator", str(d / "pickled.ckpt"), "--checkpoint-only", "--out", str(d / "o9")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"stargan import-official: error: generator {d / 'pickled.ckpt'}: refused")


# --------------------------------------------------------------------------------- v2

def test_v2_dataparallel_prefix_nets_and_optimizers(tmp_path):
    nets = v2_nets(num_domains=3)
    for name, keys in OFFICIAL_V2_SAMPLE_KEYS.items():
        assert set(keys) <= set(nets[name].state_dict()), name
    ema_file = tmp_path / "100000_nets_ema.ckpt"
    torch.save(official_v2_state(nets, prefix="module."), ema_file)          # DataParallel keys
    save_legacy(official_v2_state(nets, with_d=True), tmp_path / "100000_nets.ckpt")
    optims = official_optims(nets)
    torch.save(optims, tmp_path / "100000_optims.ckpt")
    res = _import({"nets_ema": ema_file, "nets": tmp_path / "100000_nets.ckpt",
                   "optims": tmp_path / "100000_optims.ckpt"}, tmp_path / "out", preset="v2-afhq")
    assert res.nets == ["D", "E", "E_ema", "F", "F_ema", "G", "G_ema"] and res.optims == ["D", "E", "F", "G"]

    model = load_model(res.checkpoint)
    x, y, z = _x(), torch.tensor([0, 2]), torch.randn(2, 4)
    ref = x.flip(0)
    G, Fm, E = (nets[k].eval() for k in ("generator", "mapping_network", "style_encoder"))
    assert torch.equal(model.translate_latent(x, y, z), G(x, Fm(z, y)))
    assert torch.equal(model.translate_reference(x, ref, y), G(x, E(ref, y)))
    assert model.target_names() == ["cat", "dog", "wild"]

    state = load_state(res.checkpoint)
    for ours, official in (("G", "generator"), ("D", "discriminator")):
        for k, v in nets[official].state_dict().items():
            assert torch.equal(state.nets[ours][k], v), k
    # Each moment lands on its own parameter, whatever the registration order (exp_avg = official index).
    params = list(nets["generator"].named_parameters())
    official_index = {k: i for i, k in enumerate(k for k in official_order("generator", nets["generator"].state_dict())
                                                  if k in dict(params))}
    moved = 0
    for j, (name, p) in enumerate(params):
        assert torch.equal(state.optims["G"]["state"][j]["exp_avg"], torch.full_like(p, float(official_index[name])))
        moved += official_index[name] != j
    assert moved > 0, "the fixture's official order differs from ours (to_rgb), so re-indexing is exercised"

    bad = official_optims(nets)
    bad["style_encoder"]["state"][0]["exp_avg"] = torch.zeros(2, 2)
    torch.save(bad, tmp_path / "bad_optims.ckpt")
    with pytest.raises(OfficialFormatError, match=r"optims \[style_encoder\].*shared\.0\.weight\.exp_avg \(2, 2\)"):
        _import({"nets_ema": ema_file, "nets": tmp_path / "100000_nets.ckpt", "optims": tmp_path / "bad_optims.ckpt"},
                tmp_path / "out2", preset="v2-afhq")


@pytest.fixture
def small_fan(monkeypatch):
    monkeypatch.setattr(FAN, "input_size", 64)        # fully convolutional: 64 px keeps the CPU run short


def test_v2_high_pass_model_with_the_fan_its_checkpoint_carries(tmp_path, small_fan):
    nets = v2_nets(num_domains=2, w_hpf=1.0, img=32)
    fan = random_fan(3).eval()
    laplacian = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])
    torch.save(official_v2_state(nets, fan=fan, hpf_filter=laplacian), tmp_path / "ema.ckpt")
    res = _import({"nets_ema": tmp_path / "ema.ckpt"}, tmp_path / "out", preset="v2-celeba-hq")
    assert res.arch["w_hpf"] == 1.0 and res.arch["w_hpf_in_file"] == 1.0
    assert (tmp_path / "out" / "wing.pt").exists()

    model = load_model(res.checkpoint)
    assert isinstance(model.G, MaskedGenerator)
    x, y, z = _x(size=32), torch.tensor([1, 0]), torch.randn(2, 4)
    G, Fm = nets["generator"].eval(), nets["mapping_network"].eval()
    with torch.no_grad():
        expect = G(x, Fm(z, y), masks=fan.get_heatmap(x))
    assert torch.allclose(model.translate_latent(x, y, z), expect, atol=1e-6, rtol=0)

    torch.save(official_v2_state(nets, fan=fan, hpf_filter=laplacian / 2), tmp_path / "ema2.ckpt")
    with pytest.raises(OfficialFormatError, match="its hpf.filter says w_hpf 2, not --w-hpf 1"):
        _import({"nets_ema": tmp_path / "ema2.ckpt"}, tmp_path / "out2", preset="v2-celeba-hq", w_hpf=1.0)
    torch.save(official_v2_state(nets), tmp_path / "nofan.ckpt")
    with pytest.raises(OfficialFormatError, match="pass the official wing.ckpt with --wing"):
        _import({"nets_ema": tmp_path / "nofan.ckpt"}, tmp_path / "out3", preset="v2-celeba-hq")


# ------------------------------------------------------------------- end to end (slow)

def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_import_registers_a_tagged_version_that_translates_serves_and_exports(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from stargan.data.imageio import decode_image, encode_png
    from stargan.inference import latent, to_tensor
    from stargan.visualize import to_uint8
    from test_registry import _free_port, _stop, _wait

    nets = v2_nets(num_domains=3)
    ckpt = tmp_path / "100000_nets_ema.ckpt"
    torch.save(official_v2_state(nets, prefix="module."), ckpt)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"export": {"onnx_exporter": "legacy", "latency_reps": 1}}))
    assert cli_main(["import-official", "--params", str(params), "--model", "v2-afhq", "--nets-ema", str(ckpt)]) == 0
    printed = capsys.readouterr().out
    out = json.loads(printed[printed.index("{\n"):])
    assert out["export"]["parity_max"] <= 1e-4
    reg = out["registered"]
    assert reg["name"] == "stargan-v2-afhq" and reg["version"] == "1"
    version = MlflowClient(reg["tracking_uri"]).get_model_version("stargan-v2-afhq", "1")
    sha = sha256_file(ckpt)
    assert version.tags[TAG_SOURCE] == MODELS["v2-afhq"].url and version.tags[TAG_LICENCE] == "CC-BY-NC-4.0"
    assert version.tags["stargan.sha256.nets_ema"] == sha
    assert "CC BY-NC 4.0" in version.description and "non-commercial" in version.description and sha in version.description
    for f in ("latent.onnx", "reference.onnx", "latent.pt", "model.json"):
        assert (tmp_path / "models" / "official" / "v2-afhq" / "export" / f).exists(), f

    # stargan translate on a photo with the registered model: exactly the source networks' translation.
    face = (torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(9)) * 255).to(torch.uint8).numpy()
    (tmp_path / "face.png").write_bytes(encode_png(face))
    assert cli_main(["translate", "--params", str(params), "--model", "models:/stargan-v2-afhq@champion",
                     "--input", str(tmp_path / "face.png"), "--target", "dog", "--seed", "3", "--no-align",
                     "--out", str(tmp_path / "t")]) == 0
    x = to_tensor(face)
    with torch.no_grad():
        expect = to_uint8(nets["generator"].eval()(x, nets["mapping_network"].eval()(latent(3, 4), torch.tensor([1]))))[0]
    assert (decode_image(tmp_path / "t" / "face_dog.png") == expect).all()

    # mlflow models serve answers with the same image.
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             "models:/stargan-v2-afhq@champion", "--env-manager", "local", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=tmp_path, env=env() | {"MLFLOW_TRACKING_URI": reg["tracking_uri"]},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(f"http://127.0.0.1:{port}/ping", proc)
        rows = [{"image": base64.b64encode(encode_png(face)).decode(), "target": "dog", "seed": 3}]
        served = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": rows})["predictions"]
    finally:
        _stop(proc)
    assert (decode_image(base64.b64decode(served[0]["image"])) == expect).all()


@pytest.mark.slow
def test_training_starts_from_the_imported_state(tmp_path, capsys):
    """train.init_from: nets, EMA nets, D and optimizer states of an imported official v2 state, on
    the user's data (the tiny RaFD-like set, 8 domains), at step 0 with this run's settings."""
    from stargan.config import load_config
    from stargan.training.local import fit_local
    from tiny_project import run_stage, write_params

    nets = v2_nets(num_domains=8)
    torch.save(official_v2_state(nets), tmp_path / "ema.ckpt")
    torch.save(official_v2_state(nets, with_d=True), tmp_path / "nets.ckpt")
    torch.save(official_optims(nets), tmp_path / "optims.ckpt")

    root = tmp_path / "project"
    imported = tmp_path / "official" / "checkpoint.pt"
    params = write_params(root, {"train": {"model": "v2", "datasets": ["rafd"], "num_iters": 2, "checkpoint_every": 2,
                                           "init_from": str(imported),
                                           "v2": {"lr": 0.0, "f_lr": 0.0, "weight_decay": 0.0}}})
    raw = yaml.safe_load(params.read_text())
    del raw["data"]["datasets"]["celeba"]
    raw["data"]["datasets"]["rafd"]["attributes"] = RAFD        # all 8, as the official model (the default trains 4)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    res = import_official({"nets_ema": tmp_path / "ema.ckpt", "nets": tmp_path / "nets.ckpt",
                           "optims": tmp_path / "optims.ckpt"}, imported.parent, load_config(params), root,
                          model="v2", labels=RAFD, dataset="rafd", export=False, register=False)
    assert res.checkpoint == imported
    for stage in ("download", "align", "shard"):
        run_stage(root, stage)
    fit_local(load_config(params), root, device="cpu")
    said = capsys.readouterr().out
    assert "starting from train.init_from=" in said and "fresh: nothing" in said and "angry -> angry" in said

    after = load_state(root / "models" / "train" / "checkpoint.pt")
    assert after.step == 2
    for ours, official in (("G", "generator"), ("F", "mapping_network"), ("D", "discriminator")):
        for k, v in nets[official].state_dict().items():      # lr 0: the imported weights, unchanged
            assert torch.equal(after.nets[ours][k], v), (ours, k)
    for k in ("G", "F", "E", "D"):                             # Adam's counts went on from the official 100000
        steps = {float(s["step"]) for s in after.optims[k]["state"].values()}
        assert min(steps) > 100000, (k, steps)
        assert after.optims[k]["param_groups"][0]["lr"] == 0.0, "this run's learning rate, not the file's"



def test_download_fetches_and_unzips_the_official_archive(tmp_path):
    """--download on a local server standing in for Dropbox: the v1 zip's two files come out; a pinned
    sha256 that does not match is refused (nothing leaves 127.0.0.1)."""
    import functools
    import http.server
    import threading
    import zipfile

    from stargan.data.download import DownloadError
    from stargan.official.sources import fetch

    _, _, g_path, d_path = write_v1(tmp_path / "files")
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "celeba-128x128-5attrs.zip", "w") as z:
        z.write(g_path, "200000-G.ckpt")
        z.write(d_path, "200000-D.ckpt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/celeba-128x128-5attrs.zip"
    try:
        got = fetch(MODELS["v1-celeba-128"], tmp_path / "cache", url=url, retries=0)
        assert {k: sha256_file(v) for k, v in got.items()} == {"generator": sha256_file(g_path),
                                                               "discriminator": sha256_file(d_path)}
        with pytest.raises(DownloadError, match="checksum mismatch"):
            fetch(MODELS["v1-celeba-128"], tmp_path / "cache2", url=url, sha256="0" * 64, retries=0)
    finally:
        server.shutdown()
        server.server_close()
