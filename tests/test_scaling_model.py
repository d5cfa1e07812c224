"""The scaling arithmetic of docs/scaling.md (stargan/bench/scaling.py, scaling_report.py, decode.py):
parameter counts against the papers' nets, the all-reduce plan against what the step functions
really sync, the ring formula's limits, the JSON built from bench results, and the command."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stargan.bench import scaling as sm
from stargan.bench.decode import DecodeBenchError, measure_decode, photos_from_folder
from stargan.bench.scaling_report import SETTINGS, build_model, markdown, plan
from stargan.cli import main
from stargan.config import TrainConfig, V1Config
from stargan.training import v1_step, v2_step
from stargan.training.labels import LabelLayout
from stargan.training.nets import build_v1, build_v2

REPO = Path(__file__).resolve().parents[1]
NET = sm.Link("test", 1e9, 0.0, None, "1 GB/s, no latency")


# ------------------------------------------------------------------ parameter counts

@pytest.mark.parametrize("c_dim, g, d", [(5, 8_430_528, 44_762_048), (8, 8_439_936, 44_786_624)])
def test_v1_parameter_counts_are_the_papers(c_dim, g, d):
    # stargan-official.md A.1: CelebA c_dim 5 (D matches yunjey/stargan#109), RaFD c_dim 8 (G+D 53.2 M)
    counts = {k: sm.trainable_numel(m) for k, m in sm.v1_nets(128, c_dim).items()}
    assert counts == {"G": g, "D": d}


@pytest.mark.parametrize("k, w_hpf, expected", [
    (2, 1.0, {"G": 43_467_395, "F": 2_438_272, "E": 20_916_928, "D": 20_852_290}),   # CelebA-HQ, clovaai#29 log
    (3, 0.0, {"G": 33_892_995, "F": 3_259_072, "E": 20_949_760, "D": 20_852_803}),   # AFHQ
])
def test_v2_parameter_counts_are_the_papers(k, w_hpf, expected):
    counts = {n: sm.trainable_numel(m) for n, m in sm.v2_nets(256, k, w_hpf).items()}
    assert counts == expected


def test_meta_nets_are_built_like_the_training_nets():
    cfg = TrainConfig(image_size=32, v1=V1Config(g_conv_dim=8, d_conv_dim=8, g_repeat_num=2, d_repeat_num=3))
    nets, _ = build_v1(cfg, LabelLayout([("x", ["a", "b", "c"], "multi")]))
    meta = sm.v1_nets(32, 3, conv_dim=8, g_repeat_num=2, d_repeat_num=3)
    assert {k: sm.trainable_numel(getattr(nets, k)) for k in ("G", "D")} == \
        {k: sm.trainable_numel(m) for k, m in meta.items()}
    cfg2 = TrainConfig(image_size=32)
    for key, v in dict(latent_dim=4, style_dim=8, max_conv_dim=32, mapping_hidden=16).items():
        setattr(cfg2.v2, key, v)
    nets2, _ = build_v2(cfg2, num_domains=3)
    meta2 = sm.v2_nets(32, 3, 0.0, style_dim=8, latent_dim=4, max_conv_dim=32, mapping_hidden=16)
    assert {k: sm.trainable_numel(m) for k, m in nets2.trained().items()} == \
        {k: sm.trainable_numel(m) for k, m in meta2.items()}


# ------------------------------------------------------- the plan is what the code syncs

def _recorder(names: dict[int, str]):
    calls = []

    def sync(module):
        calls.append((names[id(module)], sm.trainable_numel(module)))
    return calls, sync


def test_v1_plan_is_what_train_step_all_reduces():
    n_critic = 3
    cfg = TrainConfig(image_size=16, batch_size=4, seed=0,
                      v1=V1Config(g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, n_critic=n_critic))
    layout = LabelLayout([("blobs", ["r", "g", "b"], "onehot")])
    nets, optims = build_v1(cfg, layout)
    calls, sync = _recorder({id(nets.G): "G", id(nets.D): "D"})
    g = torch.Generator().manual_seed(0)
    for step in range(2 * n_critic):
        batch = {"image": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, "label": torch.eye(3)[torch.arange(4) % 3]}
        v1_step.train_step(nets, optims, batch, cfg, step, layout, sync_grads=sync, generator=g)
    planned = sm.v1_allreduces({"G": nets.G, "D": nets.D}, n_critic=n_critic)
    expected = {(a.net, a.numel): a.per_iter * 2 * n_critic for a in planned}
    got = {key: calls.count(key) for key in set(calls)}
    assert got == pytest.approx(expected)


def test_v2_plan_is_what_train_step_all_reduces_in_order():
    cfg = TrainConfig(image_size=16, batch_size=2)
    for key, v in dict(latent_dim=4, style_dim=8, max_conv_dim=16, mapping_hidden=16).items():
        setattr(cfg.v2, key, v)
    nets, optims = build_v2(cfg, num_domains=2)
    calls, sync = _recorder({id(m): k for k, m in nets.trained().items()})
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1])
    batch = {"x_src": torch.rand(2, 3, 16, 16, generator=g), "y_src": y, "x_ref": torch.rand(2, 3, 16, 16, generator=g),
             "x_ref2": torch.rand(2, 3, 16, 16, generator=g), "y_ref": y.flip(0)}
    v2_step.train_step(nets, optims, batch, cfg, 0, sync_grads=sync, generator=g)
    planned = sm.v2_allreduces(nets.trained())
    assert calls == [(a.net, a.numel) for a in planned]
    assert all(a.per_iter == 1.0 for a in planned)


# ----------------------------------------------------------------------- the formula

def test_ring_allreduce_time_by_hand_and_on_one_gpu():
    assert sm.ring_allreduce_seconds(1e9, 1, NET) == 0.0
    assert sm.ring_allreduce_seconds(1e9, 2, NET) == pytest.approx(1.0)          # 2·1/2·1 GB at 1 GB/s
    assert sm.ring_allreduce_seconds(1e9, 4, NET) == pytest.approx(1.5)
    slow = sm.Link("lat", 1e9, 1e-3, None, "")
    assert sm.ring_allreduce_seconds(0, 4, slow) == pytest.approx(6e-3)         # 2(N-1) latency steps
    with pytest.raises(ValueError):
        sm.ring_allreduce_seconds(1.0, 0, NET)


def test_efficiency_is_one_on_one_gpu_and_monotone_in_bandwidth_and_gpus():
    _, calls = plan(SETTINGS[0])
    assert sm.efficiency(0.02, sm.comm_seconds_per_iter(calls, 1, sm.LINKS[-1])) == 1.0
    for n in (2, 8, 64, 256):
        effs = [sm.efficiency(0.02, sm.comm_seconds_per_iter(calls, n, sm.Link("x", bw, 5e-6, None, "")))
                for bw in (1e9, 1e10, 1e11, 1e12)]
        assert all(a < b < 1.0 for a, b in zip(effs, effs[1:]))
    by_n = [sm.efficiency(0.02, sm.comm_seconds_per_iter(calls, n, NET)) for n in (1, 2, 8, 64, 256)]
    assert all(a > b for a, b in zip(by_n, by_n[1:]))
    t = sm.compute_for_efficiency(0.01, 0.9)
    assert sm.efficiency(t, 0.01) == pytest.approx(0.9)


def test_v1_bytes_per_iteration_follow_n_critic():
    _, calls = plan(SETTINGS[0])
    d, g = (sum(a.bytes for a in calls if a.net == n) for n in ("D", "G"))
    assert sum(a.bytes * a.per_iter for a in calls) == pytest.approx(d + g / 5)
    assert d == 4 * 44_762_048


# ----------------------------------------------------------------- JSON from results

def _bench(path: Path, model, size, batch, settings, device_type, variants):
    path.write_text(json.dumps({"benchmark": "train_step throughput on random device-resident data", "model": model,
                                "image_size": size, "batch_size": batch, "settings": settings,
                                "environment": {"device_type": device_type, "device": "dev"},
                                "variants": {k: {"ms_per_iter": v} for k, v in variants.items()}}))


DECODE = [{"format": "jpeg", "image_size": 128, "images": 1, "jpeg_quality": 95, "bytes_per_image": 10_000.0,
           "bytes_min": 1, "bytes_max": 1, "decodes_per_s_per_core": 1000.0, "ms_per_decode": 1.0},
          {"format": "jpeg", "image_size": 256, "images": 1, "jpeg_quality": 95, "bytes_per_image": 20_000.0,
           "bytes_min": 1, "bytes_max": 1, "decodes_per_s_per_core": 500.0, "ms_per_decode": 2.0}]


def test_model_uses_gpu_times_labels_cpu_ones_and_says_when_there_are_none(tmp_path):
    _bench(tmp_path / "train-v1-gpu.json", "v1", 128, 16, "v1: CelebA 5 attributes, ...", "cuda",
           {"eager": 20.0, "fast": 10.0, "slow": 30.0})
    _bench(tmp_path / "train-v1-cpu.json", "v1", 128, 16, "v1: CelebA 5 attributes", "cpu", {"eager": 1.0})
    _bench(tmp_path / "train-v2-cpu.json", "v2", 256, 8, "v2: 3 domains, w_hpf 0, ...", "cpu", {"eager": 4000.0})
    _bench(tmp_path / "train-v2-other.json", "v2", 128, 8, "v2: 3 domains, w_hpf 0", "cuda", {"eager": 1.0})
    (tmp_path / "train-broken.json").write_text("{not json")
    m = build_model(tmp_path, DECODE, "test", gpus=(1, 8, 64))
    v1 = m["settings"]["v1_celeba"]
    assert [(p["variant"], p["ms_per_iter"], p["kind"]) for p in v1["step_times_used"]] == \
        [("eager", 20.0, "GPU"), ("fast", 10.0, "GPU")]                   # GPU beats the faster CPU figure
    eff = v1["efficiency"]["train-v1-gpu.json:fast"]
    assert all(eff[L.name]["1"] == 1.0 for L in sm.LINKS)
    assert eff["NVLink"]["64"] is None and eff["100 Gb/s per node"]["64"] < eff["400 Gb/s per node"]["64"] < 1
    afhq = m["settings"]["v2_afhq"]
    assert [p["kind"] for p in afhq["step_times_used"]] == ["CPU (not a GPU figure)"]
    hq = m["settings"]["v2_celeba_hq"]
    assert hq["step_times_used"] == [] and "no single-device iteration time" in hq["step_times_note"]
    assert hq["comm_ms_per_iter"]["400 Gb/s per node"]["8"] > 0
    need = v1["data"]["at"]["measured: train-v1-gpu.json:eager (GPU)"]          # 16 / 20 ms = 800 img/s
    assert need["samples_per_s"] == 800.0 and need["formats"]["jpeg"] == {"decode_cores": 0.8, "read_MB_per_s": 8.0}
    target = afhq["data"]["at"][next(k for k in afhq["data"]["at"] if k.startswith("target"))]
    assert target["decodes_per_s"] == 210.0 and target["formats"]["jpeg"]["decode_cores"] == 0.42   # 3 decodes/sample
    table = markdown(m)
    assert "| v2_celeba_hq | none measured |" in table and "CPU (not a GPU figure)" in table


def test_committed_scaling_model_matches_the_code():
    m = json.loads((REPO / "benchmarks/results/scaling_model.json").read_text())
    for s in SETTINGS:
        params, calls = plan(s)
        assert m["settings"][s.key]["parameters"] == params
        assert m["settings"][s.key]["bytes_per_iter"] == sum(c.bytes * c.per_iter for c in calls)


# ------------------------------------------------------------------ decode and CLI

def test_decode_rows_and_bad_folder(tmp_path):
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(2)]
    rows = measure_decode(photos, sizes=(16, 32), min_seconds=0.01)
    assert [(r["format"], r["image_size"]) for r in rows] == [("jpeg", 16), ("png", 16), ("jpeg", 32), ("png", 32)]
    assert all(r["decodes_per_s_per_core"] > 0 and r["bytes_min"] <= r["bytes_per_image"] <= r["bytes_max"]
               for r in rows)
    with pytest.raises(DecodeBenchError, match="no .jpg"):
        photos_from_folder(tmp_path, 5)


def test_bench_scaling_command_writes_json_and_rejects_bad_input(tmp_path, capsys):
    from stargan.data.imageio import write_image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        write_image(photos / f"{i}.jpg", rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    out = tmp_path / "out" / "scaling.json"
    assert main(["bench", "scaling", "--results", str(REPO / "benchmarks/results"), "--out", str(out),
                 "--images", str(photos), "--decode-images", "2", "--min-seconds", "0.01", "--gpus", "1,8"]) == 0
    m = json.loads(out.read_text())
    assert m["gpus"] == [1, 8] and "2 photos from" in m["decode"]["source"]
    assert math.isclose(m["settings"]["v1_celeba"]["bytes_per_iter"], 4 * (44_762_048 + 8_430_528 / 5))
    assert "| v1_celeba |" in capsys.readouterr().out
    assert main(["bench", "scaling", "--results", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "scaling", "--gpus", "0,8"])
    assert "GPU counts >= 1" in capsys.readouterr().err
