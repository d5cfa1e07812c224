"""The opt-in fast path (train.fast_ops / amp_bf16 / channels_last) computes what the default path
computes: the replacement ops against the torch ops they stand for (values, gradients, and for the
pooling the double backward R1/GP take through it), and whole v1/v2 steps against the default step."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from stargan.bench.train import VARIANTS
from stargan.config import TrainConfig, V1Config
from stargan.models import v2 as m2
from stargan.models.ops import InstanceNorm, avg_pool2x, instance_norm, set_fast_ops
from stargan.models.v1 import Generator
from stargan.training import v1_step, v2_step
from stargan.training.nets import build_v1, build_v2
from stargan.training.labels import LabelLayout

FORMATS = [torch.contiguous_format, torch.channels_last]


def rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("fmt", FORMATS)
def test_avg_pool2x_matches_avg_pool2d_forward_backward_and_double_backward(fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, 6, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(5, 5, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)

    def penalty(pool):
        xl = x.clone().requires_grad_(True)
        out = F.conv2d(pool(F.leaky_relu(F.conv2d(xl, w, padding=1), 0.2)), w, padding=1)
        (grad,) = torch.autograd.grad(out.pow(2).sum(), xl, create_graph=True)
        r1 = grad.pow(2).sum()
        (gw,) = torch.autograd.grad(r1, w)           # the double backward R1/GP train D with
        return out, grad, gw

    ref, fast = penalty(lambda t: F.avg_pool2d(t, 2)), penalty(avg_pool2x)
    for a, b in zip(fast, ref):
        assert rel(a, b) < 1e-12
    y = avg_pool2x(x)
    assert y.shape == (2, 5, 4, 3)
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_matches_torch_and_keeps_the_layout(fmt, affine):
    g = torch.Generator().manual_seed(1)
    x = (3 + 2 * torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)).contiguous(memory_format=fmt)
    w = torch.randn(4, generator=g, dtype=torch.float64) if affine else None
    b = torch.randn(4, generator=g, dtype=torch.float64) if affine else None
    up = torch.randn_like(x)

    def run(fn):
        xl = x.clone().requires_grad_(True)
        params = [t.clone().requires_grad_(True) for t in (w, b) if t is not None]
        out = fn(xl, *(params or [None, None]))
        grads = torch.autograd.grad((out * up).sum(), [xl, *params])
        return out, grads

    ref, ref_grads = run(lambda t, ww, bb: F.instance_norm(t, weight=ww, bias=bb, eps=1e-5))
    out, grads = run(lambda t, ww, bb: instance_norm(t, ww, bb, 1e-5))
    assert rel(out, ref) < 1e-6          # torch's own kernel reduces in its own order
    for a, r in zip(grads, ref_grads):
        assert rel(a, r) < 1e-6
    assert out.is_contiguous(memory_format=fmt)


def test_fast_adain_and_blocks_match_the_stock_ops():
    torch.manual_seed(0)
    x, s = torch.randn(2, 8, 8, 8), torch.randn(2, 4)
    blocks = [m2.AdaIN(4, 8), m2.ResBlk(8, 16, normalize=True, downsample=True),
              m2.AdainResBlk(8, 8, 4, upsample=True)]
    for block in blocks:
        args = (x, s) if not isinstance(block, m2.ResBlk) else (x,)
        for m in block.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight)       # non-trivial styles
        ref = block(*args)
        set_fast_ops(block)
        assert all(m.fast for m in block.modules() if hasattr(type(m), "fast"))
        assert rel(block(*args), ref) < 1e-5
        set_fast_ops(block, False)


def test_fast_norm_module_keeps_state_dict_keys_and_parameter_counts():
    G = Generator(8, 5, 1)
    keys = set(G.state_dict())
    set_fast_ops(G)
    assert set(G.state_dict()) == keys
    assert isinstance(G.main[1], InstanceNorm) and G.main[1].fast
    assert isinstance(G.main[1], torch.nn.InstanceNorm2d)


def _v1_cfg(**knobs) -> TrainConfig:
    v1 = V1Config(g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, n_critic=1, num_iters_decay=0)
    return dataclasses.replace(TrainConfig(image_size=16, num_iters=100, batch_size=4, seed=0, v1=v1), **knobs)


def _v1_run(cfg: TrainConfig, steps: int = 2) -> tuple[list[dict], list[torch.Tensor]]:
    layout = LabelLayout([("c", ["a", "b", "c"], "multi")])
    nets, optims = build_v1(cfg, layout)
    g = torch.Generator().manual_seed(3)
    gen = torch.Generator().manual_seed(4)
    out = []
    for step in range(steps):
        batch = {"image": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1,
                 "label": torch.randint(0, 2, (4, 3), generator=g).float()}
        out.append(v1_step.train_step(nets, optims, batch, cfg, step, layout, generator=gen))
    return out, [p.detach().clone() for p in nets.G.parameters()]


def _close(fast: list[dict], ref: list[dict], tol: float) -> None:
    for f, r in zip(fast, ref):
        assert set(f) == set(r)
        for k in r:
            assert abs(f[k] - r[k]) <= tol * (1 + abs(r[k])), (k, f[k], r[k])


def test_v1_fast_ops_and_channels_last_step_equals_the_default_step():
    ref, ref_w = _v1_run(_v1_cfg())
    fast, fast_w = _v1_run(_v1_cfg(fast_ops=True, channels_last=True))
    _close(fast, ref, 1e-4)
    # after two Adam steps (whose first updates are ~lr·sign(grad)), the nets still agree closely
    assert rel(torch.cat([w.flatten() for w in fast_w]), torch.cat([w.flatten() for w in ref_w])) < 1e-3


def test_v1_bf16_fast_path_losses_stay_close_to_fp32():
    ref, _ = _v1_run(_v1_cfg())
    fast, _ = _v1_run(_v1_cfg(fast_ops=True, channels_last=True, amp_bf16=True))
    _close(fast, ref, 0.1)
    for f, r in zip(fast, ref):
        assert abs(f["D/loss_gp"] - r["D/loss_gp"]) < 0.05 * (1 + r["D/loss_gp"])


def _v2_run(cfg: TrainConfig, steps: int = 2) -> tuple[list[dict], dict]:
    nets, optims = build_v2(cfg, num_domains=2)
    g = torch.Generator().manual_seed(5)
    gen = torch.Generator().manual_seed(6)
    out = []
    for step in range(steps):
        y = torch.randint(0, 2, (3,), generator=g)
        batch = {"x_src": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, "y_src": torch.randint(0, 2, (3,), generator=g),
                 "x_ref": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1,
                 "x_ref2": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, "y_ref": y}
        out.append(v2_step.train_step(nets, optims, batch, cfg, step, generator=gen))
    return out, {k: m.state_dict() for k, m in nets.trained().items()}


def _v2_cfg(**knobs) -> TrainConfig:
    cfg = dataclasses.replace(TrainConfig(image_size=16, batch_size=3), **knobs)
    for k, v in dict(latent_dim=4, style_dim=8, max_conv_dim=16, mapping_hidden=16).items():
        setattr(cfg.v2, k, v)
    return cfg


def test_v2_fast_path_batched_passes_equal_the_default_step():
    ref, ref_sd = _v2_run(_v2_cfg())
    fast, fast_sd = _v2_run(_v2_cfg(fast_ops=True, channels_last=True))
    _close(fast, ref, 1e-4)
    for net in ref_sd:   # whole-net relative difference after two Adam steps
        flat = [torch.cat([sd[k].float().flatten() for k in sorted(sd)]) for sd in (fast_sd[net], ref_sd[net])]
        assert rel(*flat) < 1e-3, net


def test_v2_bf16_fast_path_losses_stay_close_to_fp32():
    ref, _ = _v2_run(_v2_cfg(), steps=1)
    fast, _ = _v2_run(_v2_cfg(fast_ops=True, channels_last=True, amp_bf16=True), steps=1)
    _close(fast, ref, 0.1)


def test_default_path_uses_the_stock_ops():
    cfg = _v2_cfg()
    nets, _ = build_v2(cfg, num_domains=2)
    assert not any(getattr(m, "fast", False) for m in nets.G.modules())
    assert nets.D_single is nets.D


def test_bench_variants_name_real_knobs():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for knobs in VARIANTS.values():
        assert set(knobs) <= fields
        assert all(isinstance(v, bool) for v in knobs.values())
    assert VARIANTS["eager"] == {}
