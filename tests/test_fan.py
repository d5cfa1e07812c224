"""FAN landmark network for w_hpf > 0: official shape and names, strict loading of wing.ckpt, the
(coarse, fine) masks, training with it, exact resume without it in checkpoints, and inference.

No real wing.ckpt here: the files are random-weight FANs saved in the official format. Every test
but ``test_get_heatmap_at_full_size`` runs the FAN at 64 px instead of 256 (it is fully
convolutional) so the CPU runs stay short."""
from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch

from stargan.config import Config, ConfigError, config_from_dict
from stargan.inference import MaskedGenerator, load_model
from stargan.models.fan import FAN, REGIONS, WING_URL, heatmaps_to_masks, load_fan
from stargan.training.nets import build_v2
from stargan.training import v2_step
from stargan.training.checkpoint import CheckpointError, load_state, save_state
from stargan.training.v2_trainer import V2Trainer

OFFICIAL_FAN_PARAMS = 6_333_603      # "fan: 6333603" in the official StarGAN v2 training log (issue #29)


@pytest.fixture
def small_fan(monkeypatch):
    monkeypatch.setattr(FAN, "input_size", 64)


def random_fan(seed: int = 0) -> FAN:
    """A FAN with random weights *and* non-default BatchNorm statistics, so loading them matters."""
    torch.manual_seed(seed)
    fan = FAN()
    with torch.no_grad():
        for m in fan.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return fan


@pytest.fixture(scope="module")
def wing_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wing") / "wing.ckpt"
    torch.save({"state_dict": random_fan(1).state_dict(), "epoch": 7}, path)
    return path


def test_parameter_count_matches_the_official_log():
    fan = FAN()
    assert sum(p.numel() for p in fan.parameters()) == OFFICIAL_FAN_PARAMS
    # the head carries the 98 landmarks plus the boundary heatmap: without it the count is off by 257
    assert fan.l0.out_channels == 99


def test_state_dict_names_and_shapes_are_the_official_ones():
    sd = FAN().state_dict()
    expected = {
        "conv1.conv.weight": (64, 6, 7, 7),              # coord-conv stem: RGB + row, column, radius
        "bn1.running_var": (64,),
        "conv2.downsample.2.weight": (128, 64, 1, 1),    # BN, ReLU, conv1x1 shortcut
        "conv4.conv1.weight": (128, 128, 3, 3),
        "m0.coordconv.conv.weight": (256, 259, 1, 1),
        "m0.b1_4.bn1.weight": (256,),
        "m0.b2_plus_1.conv3.weight": (64, 64, 3, 3),
        "m0.b3_1.conv2.weight": (64, 128, 3, 3),
        "top_m_0.conv1.weight": (128, 256, 3, 3),
        "conv_last0.bias": (256,),
        "bn_end0.num_batches_tracked": (),
        "l0.weight": (99, 256, 1, 1),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("module.") for k in sd)
    assert sum(k.startswith("m0.b") for k in sd if k.endswith("conv1.weight")) == 13   # 4 levels x 3 + b2_plus_1


def test_fan_is_frozen_and_stays_in_eval_mode():
    fan = FAN().train()
    assert not fan.training and not any(m.training for m in fan.modules())
    assert not any(p.requires_grad for p in fan.parameters())


@pytest.mark.parametrize("wrap", ["official", "bare", "module_prefix"])
def test_load_round_trip_gives_identical_outputs(tmp_path, wrap):
    src = random_fan(2)
    sd = src.state_dict()
    payload = {"bare": sd, "official": {"state_dict": sd, "optimizer": {"lr": 1e-4}},
               "module_prefix": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}}[wrap]
    path = tmp_path / "wing.ckpt"
    torch.save(payload, path)
    rng = torch.get_rng_state()
    fan = load_fan(path)
    assert torch.equal(rng, torch.get_rng_state())               # building it drew no random numbers
    assert not fan.training and not any(p.requires_grad for p in fan.parameters())
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(fan(x), src.eval()(x))


def test_load_accepts_the_keys_of_further_hourglass_stacks(tmp_path):
    sd = random_fan(3).state_dict()
    extra = {"m1.b1_4.bn1.weight": torch.ones(256), "top_m_1.conv1.weight": torch.ones(1),
             "l3.weight": torch.ones(1), "bl0.weight": torch.ones(1), "al2.bias": torch.ones(1)}
    torch.save({"state_dict": sd | extra}, tmp_path / "wing4.ckpt")
    fan = load_fan(tmp_path / "wing4.ckpt")
    assert torch.equal(fan.l0.weight, sd["l0.weight"])


def _save(tmp_path, sd, name="wing.ckpt"):
    path = tmp_path / name
    torch.save({"state_dict": sd}, path)
    return path


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"missing keys: l0\.bias"),
    ("shape", r"shape mismatches: l0\.weight \(98, 256, 1, 1\) in the file, \(99, 256, 1, 1\) in FAN"),
    ("unexpected", r"unexpected keys: head\.weight"),
])
def test_wrong_files_are_refused_naming_the_keys_and_the_fix(tmp_path, case, pattern):
    sd = FAN().state_dict()
    if case == "missing":
        del sd["l0.bias"]
    elif case == "shape":
        sd["l0.weight"] = torch.zeros(98, 256, 1, 1)
    else:
        sd["head.weight"] = torch.zeros(1)
    path = _save(tmp_path, sd)
    with pytest.raises(ConfigError, match=pattern) as e:
        load_fan(path)
    msg = str(e.value)
    assert str(path) in msg and WING_URL in msg and "train.v2.w_hpf: 0" in msg


def test_many_missing_keys_are_listed_briefly(tmp_path):
    sd = {k: v for k, v in FAN().state_dict().items() if not k.startswith("m0.")}
    with pytest.raises(ConfigError, match=r"missing keys: m0\.coordconv\.conv\.weight, .*\(\d+ in all\)"):
        load_fan(_save(tmp_path, sd))


def test_garbage_pickled_objects_and_non_state_dicts_are_refused(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ConfigError, match=r"garbage\.ckpt: cannot read it as a weights-only torch file"):
        load_fan(garbage)
    pickled = tmp_path / "pickled.ckpt"          # a pickled object would run code on load: refused
    torch.save({"state_dict": FAN().state_dict(), "args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(ConfigError, match="save its 'state_dict' alone once with torch.save"):
        load_fan(pickled)
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ConfigError, match="holds no state dict of tensors"):
        load_fan(tensor)
    with pytest.raises(ConfigError, match="no such file"):
        load_fan(tmp_path / "absent.ckpt")


def blob_heatmaps(points: dict[int, tuple[int, int]], size: int = 64) -> torch.Tensor:
    """[1, 98, size, size]: a Gaussian blob at (row, col) for the listed landmarks, flat zero elsewhere."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    heat = torch.zeros(1, 98, size, size)
    for k, (r, c) in points.items():
        heat[0, k] = torch.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.5 ** 2))
    return heat


def test_masks_follow_the_face_regions():
    eye, nose, mouth, jaw, brow = (20, 20), (32, 32), (48, 32), (60, 10), (12, 20)
    first = {name: start for name, (start, *_rest) in REGIONS.items()}
    heat = blob_heatmaps({first["eyes"]: eye, first["nose"]: nose, first["mouth"]: mouth,
                          first["contour"]: jaw, first["eyebrows"]: brow})
    coarse, fine = heatmaps_to_masks(heat, (64, 64))
    assert coarse.shape == fine.shape == (1, 1, 64, 64)
    assert coarse.min() >= 0 and coarse.max() <= 1 and fine.min() >= 0 and fine.max() <= 1

    def at(mask, rc):
        return mask[0, 0, rc[0], rc[1]].item()

    assert at(coarse, eye) > 0.9 and at(coarse, nose) > 0.9 and at(coarse, mouth) > 0.9
    assert at(coarse, brow) > 0.9 and 0.4 < at(coarse, jaw) < 0.6          # the contour counts half
    assert at(fine, eye) > 0.9 and at(fine, nose) > 0.9
    assert at(fine, mouth) == at(fine, jaw) == at(fine, brow) == 0.0       # no lips, jaw, eyebrows
    assert coarse[0, 0, 0, 63] == 0.0                                      # background
    small, _ = heatmaps_to_masks(heat, (16, 16))                          # area-averaged: blobs survive
    assert small[0, 0, eye[0] // 4, eye[1] // 4] > 0.2


def test_get_heatmap_at_full_size():
    """The real path: 32-px images in [-1, 1] -> FAN at 256 px -> masks at 32 px, fp32 even under
    autocast, no autograd graph."""
    fan = random_fan(4)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coarse, fine = fan.get_heatmap(x)
    for m in (coarse, fine):
        assert m.shape == (2, 1, 32, 32) and m.dtype == torch.float32 and not m.requires_grad
        assert m.min() >= 0 and m.max() <= 1 and torch.isfinite(m).all()


def tiny_cfg(wing_path, w_hpf: float = 1.0) -> Config:
    return config_from_dict({
        "data": {"datasets": {"synthetic": {}}},
        "train": {"model": "v2", "datasets": ["synthetic"], "image_size": 32, "batch_size": 2,
                  "v2": {"latent_dim": 4, "style_dim": 8, "max_conv_dim": 16, "mapping_hidden": 16,
                         "w_hpf": w_hpf, "wing_path": str(wing_path)}}})


def batch_at(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    y_src, y_ref = torch.randint(0, 2, (2,), generator=g), torch.randint(0, 2, (2,), generator=g)
    return {"x_src": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "y_src": y_src,
            "x_ref": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
            "x_ref2": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "y_ref": y_ref}


def test_build_v2_loads_the_fan_and_a_step_trains_with_its_masks(wing_file, small_fan, monkeypatch):
    cfg = tiny_cfg(wing_file).train
    nets, optims = build_v2(cfg, 2)
    assert isinstance(nets.fan, FAN) and hasattr(nets.G, "hpf")
    assert torch.equal(nets.fan.l0.weight, torch.load(wing_file, weights_only=True)["state_dict"]["l0.weight"])
    assert all(m is not nets.fan for m in (nets.trained() | nets.ema()).values())
    calls = []
    inner = nets.fan.get_heatmap
    monkeypatch.setattr(nets.fan, "get_heatmap", lambda x: calls.append(x.shape) or inner(x))
    fan_before = {k: v.clone() for k, v in nets.fan.state_dict().items()}
    g0 = nets.G.decode[-1].conv1.weight.clone()
    scalars = v2_step.train_step(nets, optims, batch_at(0), cfg, 0, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(v)) for v in scalars.values())
    assert len(calls) == 3                                # x_real, and the fake of each G phase (cycle)
    assert not torch.equal(g0, nets.G.decode[-1].conv1.weight)
    assert all(torch.equal(v, nets.fan.state_dict()[k]) for k, v in fan_before.items())


def _trainer(cfg: Config, nets, optims, gen) -> SimpleNamespace:
    """What V2Trainer.state/load read, without a data stream (the real methods run on it)."""
    return SimpleNamespace(cfg=cfg, nets=nets, optims=optims, gen=gen,
                           domains=SimpleNamespace(names=["a", "b"]),
                           stream=SimpleNamespace(manifest={"label_names": ["a", "b"], "label_kind": "onehot"}),
                           _modules=lambda: V2Trainer._modules(SimpleNamespace(nets=nets)))


def test_exact_resume_with_the_fan_outside_the_checkpoint(wing_file, small_fan, tmp_path):
    cfg = tiny_cfg(wing_file)

    def fresh():
        nets, optims = build_v2(cfg.train, 2)
        return _trainer(cfg, nets, optims, torch.Generator().manual_seed(9))

    def step(tr, s):
        v2_step.train_step(tr.nets, tr.optims, batch_at(s), cfg.train, s, generator=tr.gen)

    straight = fresh()
    for s in range(2):
        step(straight, s)

    first = fresh()
    step(first, 0)
    ckpt = save_state(V2Trainer.state(first, 1), tmp_path)
    state = load_state(ckpt)
    assert set(state.nets) == {"G", "F", "E", "D", "G_ema", "F_ema", "E_ema"}
    assert not any("fan" in k or k.startswith("m0.") for sd in state.nets.values() for k in sd)
    resumed = fresh()
    V2Trainer.load(resumed, state)
    step(resumed, 1)
    for name in ("G", "F", "E", "D", "G_ema", "F_ema", "E_ema"):
        a, b = getattr(straight.nets, name).state_dict(), getattr(resumed.nets, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_inference_of_a_w_hpf_checkpoint_uses_the_fan(wing_file, small_fan, tmp_path):
    cfg = tiny_cfg(wing_file)
    nets, optims = build_v2(cfg.train, 2)
    tr = _trainer(cfg, nets, optims, torch.Generator().manual_seed(0))
    ckpt = save_state(V2Trainer.state(tr, 3), tmp_path / "run")

    model = load_model(ckpt)
    assert isinstance(model.G, MaskedGenerator) and model.target_names() == ["a", "b"]
    x, z, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4), torch.tensor([0, 1])
    want = v2_step.translate_latent(nets, x, y, z)                   # G_ema with the FAN masks
    assert torch.allclose(model.translate_latent(x, y, z), want, atol=1e-6)
    no_masks = nets.G_ema(x, nets.F_ema(z, y))
    assert not torch.allclose(want, no_masks, atol=1e-4)              # the masks change the output

    wing_copy = tmp_path / "elsewhere.ckpt"
    wing_copy.write_bytes(wing_file.read_bytes())
    cfg_gone = tiny_cfg(tmp_path / "gone" / "wing.ckpt")
    tr_gone = _trainer(cfg_gone, nets, optims, torch.Generator().manual_seed(0))
    ckpt_gone = save_state(V2Trainer.state(tr_gone, 3), tmp_path / "run_gone")
    with pytest.raises(CheckpointError, match=r"w_hpf=1.0.*'.*gone/wing\.ckpt', which does not exist.*wing_path="):
        load_model(ckpt_gone)
    model = load_model(ckpt_gone, wing_path=wing_copy)
    assert torch.allclose(model.translate_latent(x, y, z), want, atol=1e-6)
