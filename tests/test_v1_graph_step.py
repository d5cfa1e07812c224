"""The static-buffer v1 step of train.cuda_graphs (stargan/training/v1_graph.py), run on the CPU:
the same function the CUDA path captures, uncaptured. It must compute what the eager
v1_step.train_step computes from the same seed and batches, keep every weight as it was on a
non-finite step and say so, and say in one log line that a CPU device runs it uncaptured."""
import dataclasses
import logging

import pytest
import torch

from stargan.config import ConfigError, TrainConfig, V1Config, config_from_dict
from stargan.training import v1_step
from stargan.training.errors import NonFiniteLossError
from stargan.training.labels import LabelLayout
from stargan.training.nets import build_v1
from stargan.training.v1_graph import V1GraphStep, load_optimizer_state, optimizer_state

LAYOUT = LabelLayout([("c", ["a", "b", "c"], "multi")])
#: Against the eager step with the same fused Adam the static step is bit-identical on the CPU (tolerance
#: 0). Against the default eager step (for-each Adam on CPU) only Adam's rounding differs; Adam's first
#: updates are ~lr·sign(grad), so a near-zero gradient of other sign moves a weight by 2·lr: after
#: three steps the nets agree to this relative error (the fast-path tests allow 1e-3).
DEFAULT_ADAM_WEIGHT_RTOL, DEFAULT_ADAM_LOSS_TOL = 1e-4, 1e-4


def _cfg(decay: int = 2, num_iters: int = 3, **knobs) -> TrainConfig:
    v1 = V1Config(g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, n_critic=2, num_iters_decay=decay)
    return dataclasses.replace(TrainConfig(image_size=16, num_iters=num_iters, batch_size=4, seed=0, v1=v1), **knobs)


def _batches(n: int, uint8: bool = False, device: str = "cpu") -> list[dict]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        image = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
        if uint8:
            image = ((image + 1) * 127.5).round().to(torch.uint8)
        out.append({"image": image.to(device), "label": torch.randint(0, 2, (4, 3), generator=g).float().to(device)})
    return out


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("knobs", [{}, {"fast_ops": True, "channels_last": True}, {"uint8": True}],
                         ids=["default", "fast_ops_channels_last", "uint8_batches"])
def test_static_step_computes_what_the_eager_step_computes(knobs, caplog):
    knobs = dict(knobs)
    uint8 = knobs.pop("uint8", False)
    batches = _batches(3, uint8)
    # eager reference, with the same (fused) Adam: the comparison is of the steps, not of Adam kernels
    nets_e, opt_e = build_v1(_cfg(cuda_graphs=True, **knobs), LAYOUT)
    gen = torch.Generator().manual_seed(4)
    ref = [v1_step.train_step(nets_e, opt_e, b, _cfg(**knobs), s, LAYOUT, generator=gen) for s, b in enumerate(batches)]
    # static-buffer step, same seed and batches
    cfg = _cfg(cuda_graphs=True, **knobs)
    nets, optims = build_v1(cfg, LAYOUT)
    with caplog.at_level(logging.WARNING, logger="stargan.training.v1_graph"):
        step = V1GraphStep(nets, optims, cfg, LAYOUT, generator=torch.Generator().manual_seed(4))
    got = [step(b, s) for s, b in enumerate(batches)]

    assert not step.capture and step.captured == ()
    assert [set(r) for r in got] == [set(r) for r in ref]
    assert "G/loss" in got[1] and "G/loss" not in got[0] and "G/loss" not in got[2]     # n_critic 2
    assert got == ref                                                                  # bit for bit
    assert got[2]["lr/d"] == 0.5 * cfg.v1.d_lr                                         # LR decay seen
    for a, b in ((nets.G, nets_e.G), (nets.D, nets_e.D)):
        assert torch.equal(_flat(a), _flat(b))
    assert _rel(_flat(nets.D), _flat(build_v1(cfg, LAYOUT)[0].D)) > 1e-3               # it did train
    # and the default eager step (its own for-each Adam on CPU) agrees up to Adam's rounding
    nets_d, opt_d = build_v1(_cfg(**knobs), LAYOUT)
    gen = torch.Generator().manual_seed(4)
    default = [v1_step.train_step(nets_d, opt_d, b, _cfg(**knobs), s, LAYOUT, generator=gen)
               for s, b in enumerate(batches)]
    for g, r in zip(got, default):
        for k in r:
            assert abs(g[k] - r[k]) <= DEFAULT_ADAM_LOSS_TOL * (1 + abs(r[k])), (k, g[k], r[k])
    for a, b in ((nets.G, nets_d.G), (nets.D, nets_d.D)):
        assert _rel(_flat(a), _flat(b)) < DEFAULT_ADAM_WEIGHT_RTOL


def test_a_non_finite_step_updates_nothing_and_is_reported():
    cfg = _cfg(decay=0, cuda_graphs=True)                   # constant LR: every good step moves the weights
    nets, optims = build_v1(cfg, LAYOUT)
    step = V1GraphStep(nets, optims, cfg, LAYOUT, generator=torch.Generator().manual_seed(4))
    good = _batches(3)
    step(good[0], 0)
    step(good[1], 1)                                         # D and G have Adam state now
    before = {k: _flat(m).clone() for k, m in (("G", nets.G), ("D", nets.D))}
    adam = {k: {n: [s[n].clone() for s in o.state.values()] for n in ("exp_avg", "exp_avg_sq", "step")}
            for k, o in (("g", optims.g), ("d", optims.d))}
    bad = {"image": good[2]["image"].clone(), "label": good[2]["label"]}
    bad["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError) as e:
        step(bad, 3)                                         # a G step too: (3 + 1) % 2 == 0
    assert e.value.step == 3 and e.value.name.startswith("D/")
    for k, m in (("G", nets.G), ("D", nets.D)):
        assert torch.equal(_flat(m), before[k]), k
    for k, o in (("g", optims.g), ("d", optims.d)):
        for n, old in adam[k].items():
            assert all(torch.equal(s[n], t) for s, t in zip(o.state.values(), old)), (k, n)
    # training goes on from the same weights once the data is finite again
    assert set(step(good[2], 3)) >= {"D/loss", "G/loss"}
    assert not torch.equal(_flat(nets.D), before["D"])


def test_deferred_collect_names_the_first_bad_step_and_skips_only_it():
    cfg = _cfg(cuda_graphs=True)
    nets, optims = build_v1(cfg, LAYOUT)
    step = V1GraphStep(nets, optims, cfg, LAYOUT, generator=torch.Generator().manual_seed(4))
    good = _batches(3)
    bad = {"image": torch.full_like(good[0]["image"], float("inf")), "label": good[0]["label"]}
    step.submit(good[0], 0)
    step.submit(bad, 1)
    step.submit(good[1], 2)
    with pytest.raises(NonFiniteLossError) as e:
        step.collect()
    assert e.value.step == 1
    assert step.collect() == []                              # the pending list is consumed
    for p in nets.D.parameters():
        assert torch.isfinite(p).all()


def test_cuda_graphs_on_a_cpu_device_falls_back_with_one_log_line(caplog):
    cfg = _cfg(cuda_graphs=True)
    nets, optims = build_v1(cfg, LAYOUT)
    with caplog.at_level(logging.WARNING, logger="stargan.training.v1_graph"):
        step = V1GraphStep(nets, optims, cfg, LAYOUT)
        step(_batches(1)[0], 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "stargan.training.v1_graph"]
    assert len(lines) == 1 and "a CPU device" in lines[0] and "uncaptured" in lines[0]
    assert not step.capture
    with caplog.at_level(logging.WARNING, logger="stargan.training.v1_graph"):
        V1GraphStep(nets, optims, cfg, LAYOUT, capture=False)                    # asked not to: no line
    assert len([r for r in caplog.records if r.name == "stargan.training.v1_graph"]) == 1


def test_the_static_step_refuses_plain_adam_and_a_changed_batch_shape():
    nets, optims = build_v1(_cfg(), LAYOUT)                  # no cuda_graphs: for-each Adam on CPU
    with pytest.raises(ValueError, match="not a fused Adam"):
        V1GraphStep(nets, optims, _cfg(cuda_graphs=True), LAYOUT)
    cfg = _cfg(cuda_graphs=True)
    nets, optims = build_v1(cfg, LAYOUT)
    step = V1GraphStep(nets, optims, cfg, LAYOUT, capture=False)
    b = _batches(1)[0]
    step(b, 0)
    with pytest.raises(ValueError, match="fixed batch shape"):
        step({"image": b["image"][:3], "label": b["label"][:3]}, 1)


def test_checkpoint_optimizer_state_has_float_lr_and_loads_back_keeping_fused():
    cfg = _cfg(cuda_graphs=True)
    nets, optims = build_v1(cfg, LAYOUT)
    step = V1GraphStep(nets, optims, cfg, LAYOUT, capture=False)
    step(_batches(1)[0], 0)
    sd = optimizer_state(optims.d)
    assert isinstance(sd["param_groups"][0]["lr"], float)
    eager_nets, eager_opt = build_v1(_cfg(), LAYOUT)         # an eager run's checkpoint: for-each Adam
    load_optimizer_state(eager_opt.d, sd)
    assert not eager_opt.d.param_groups[0].get("fused")
    load_optimizer_state(optims.d, eager_opt.d.state_dict())
    assert optims.d.param_groups[0]["fused"]
    assert all(s["step"].dtype == torch.float32 for s in optims.d.state.values())


def test_cuda_graphs_knob_is_validated_and_v1_only():
    base = {"train": {"model": "v1"}}
    assert config_from_dict(base, ["train.cuda_graphs=true"]).train.cuda_graphs is True
    assert TrainConfig().cuda_graphs is False and TrainConfig().compile_blocks is False
    with pytest.raises(ConfigError, match="train.cuda_graphs: expected true/false"):
        config_from_dict(base, ["train.cuda_graphs=sometimes"])
    with pytest.raises(ConfigError, match="StarGAN v1 only"):
        config_from_dict({"train": {"model": "v2", "datasets": []}}, ["train.cuda_graphs=true"])
    with pytest.raises(ConfigError, match="replaces train.compile"):
        config_from_dict(base, ["train.compile=true", "train.compile_blocks=true"])


# ------------------------------------------------------------------ on a GPU (device_run.sh round2 runs these)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("knobs", [{}, {"amp_bf16": True, "channels_last": True, "fast_ops": True}],
                         ids=["fp32", "bf16_cl_ops"])
def test_captured_graphs_replay_what_the_uncaptured_step_computes(knobs):
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    dev = torch.device("cuda")
    cfg = _cfg(decay=4, num_iters=10, cuda_graphs=True, **knobs)        # LR moves after capture
    runs = {}
    for capture in (False, True):
        nets, optims = build_v1(cfg, LAYOUT, dev)
        step = V1GraphStep(nets, optims, cfg, LAYOUT, generator=torch.Generator().manual_seed(4), capture=capture,
                           warmup=1)
        runs[capture] = ([step(b, s) for s, b in enumerate(_batches(10, device="cuda"))], nets, step)
    (plain, nets_p, _), (graphed, nets_g, step) = runs[False], runs[True]
    assert step.captured == ("d", "g")                      # D captured at step 1, G at step 3
    for g, r in zip(graphed, plain):
        assert set(g) == set(r)
        for k in r:
            assert abs(g[k] - r[k]) <= 1e-5 * (1 + abs(r[k])), (k, g[k], r[k])
    for a, b in ((nets_g.G, nets_p.G), (nets_g.D, nets_p.D)):
        assert _rel(_flat(a), _flat(b)) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_captured_non_finite_step_updates_nothing():
    dev = torch.device("cuda")
    cfg = _cfg(decay=0, num_iters=10, cuda_graphs=True)
    nets, optims = build_v1(cfg, LAYOUT, dev)
    step = V1GraphStep(nets, optims, cfg, LAYOUT, generator=torch.Generator().manual_seed(4), warmup=1)
    good = _batches(5, device="cuda")
    for s in range(4):
        step(good[s], s)
    assert step.captured == ("d", "g")
    before = {k: _flat(m).clone() for k, m in (("G", nets.G), ("D", nets.D))}
    bad = {"image": good[4]["image"].clone(), "label": good[4]["label"]}
    bad["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError) as e:
        step(bad, 5)                                         # a G step: (5 + 1) % 2 == 0
    assert e.value.step == 5
    for k, m in (("G", nets.G), ("D", nets.D)):
        assert torch.equal(_flat(m), before[k]), k
    step(good[4], 5)
    assert not torch.equal(_flat(nets.G), before["G"])


# ------------------------------------------------------------------ through the v1 trainer (real shards)

def _trainer_cfg(tmp_path, **knobs):
    from stargan.bench.data import write_aligned_set
    from stargan.config import Config, ShardConfig
    from stargan.data.shards import write_shards

    if not (tmp_path / "shards" / "toy" / "manifest.json").exists():
        aligned = write_aligned_set(tmp_path / "aligned", n=32, image_size=16, split="train")
        write_shards(aligned, tmp_path / "shards" / "toy", ShardConfig(image_format="jpeg", rows_per_group=8),
                     name="toy")
    v1 = V1Config(g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, n_critic=2, num_iters_decay=0)
    train = TrainConfig(datasets=["toy"], image_size=16, batch_size=4, num_iters=10, v1=v1)
    train = dataclasses.replace(train, **knobs)
    return dataclasses.replace(Config(), train=train)


def test_the_trainer_with_cuda_graphs_trains_and_resumes_exactly(tmp_path):
    import io

    from stargan.training.checkpoint import TrainState
    from stargan.training.v1_trainer import V1Trainer
    from stargan.training.worker import WorkerContext

    ctx = WorkerContext(rank=0, world_size=1, device=torch.device("cpu"), shard_root=tmp_path / "shards")
    cfg = _trainer_cfg(tmp_path, cuda_graphs=True)
    whole = V1Trainer(cfg, ctx)
    assert whole.graph_steps is not None and len(whole.graph_steps) == 1
    straight = [whole.train_step(s) for s in range(3)]
    assert "G/loss" in straight[1]
    first = V1Trainer(cfg, ctx)
    for s in range(2):
        first.train_step(s)
    buf = io.BytesIO()
    torch.save(first.state(2).__dict__, buf)                 # as a checkpoint file would hold it
    buf.seek(0)
    state = TrainState(**torch.load(buf, weights_only=False))
    assert isinstance(state.optims["d"]["param_groups"][0]["lr"], float)
    resumed = V1Trainer(cfg, ctx)
    resumed.load(state)
    assert resumed.optims.d.param_groups[0]["fused"]
    assert resumed.train_step(2) == straight[2]
    # and the default (eager) trainer on the same data agrees up to Adam's rounding
    eager = V1Trainer(_trainer_cfg(tmp_path), ctx)
    assert eager.graph_steps is None
    for s, ref in enumerate(straight):
        got = eager.train_step(s)
        for k in ref:
            assert abs(got[k] - ref[k]) <= DEFAULT_ADAM_LOSS_TOL * (1 + abs(ref[k])), (k, got[k], ref[k])
