"""The StarGAN v1 step: losses, mask vector, n_critic, LR schedule, determinism, NaN guard, learning."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

from stargan.config import TrainConfig, V1Config
from stargan.losses import gradient_penalty, interpolate
from stargan.training.errors import NonFiniteLossError
from stargan.training.labels import LabelLayout
from stargan.training.schedules import linear_decay_lr
from stargan.training.nets import build_v1
from stargan.training.v1_step import cls_loss, train_step, translate, translation_grid

CELEBA = ("celeba", ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"], "multi")
RAFD = ("rafd", ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"],
        "onehot")
COLOURS = LabelLayout([("blobs", ["red", "green", "blue"], "onehot")])


def tiny_cfg(**v1) -> TrainConfig:
    base = dict(g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, n_critic=1, num_iters_decay=0)
    base.update(v1)
    return TrainConfig(image_size=16, num_iters=100, batch_size=4, seed=0, v1=V1Config(**base))


def blobs(n: int, g: torch.Generator, size: int = 16) -> dict:
    """A disc of the domain's pure colour (red/green/blue) on faint noise; label = the colour."""
    cls = torch.randint(0, 3, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy = torch.randint(4, size - 4, (n, 1, 1), generator=g)
    cx = torch.randint(4, size - 4, (n, 1, 1), generator=g)
    r = torch.randint(3, 6, (n, 1, 1), generator=g)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).float()[:, None]
    colour = torch.full((n, 3, 1, 1), -1.0)
    colour[torch.arange(n), cls] = 1.0
    image = mask * colour + (1 - mask) * 0.1 * torch.randn(n, 3, size, size, generator=g)
    return {"image": image, "label": torch.eye(3)[cls]}


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------- losses

def test_gradient_penalty_is_zero_for_a_unit_gradient_critic_and_positive_otherwise():
    x = torch.randn(4, 3, 8, 8)
    w = torch.randn(3, 8, 8)
    for scale, expected in [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25)]:
        wn = scale * w / w.norm()
        x_hat = x.clone().requires_grad_(True)
        out = (x_hat * wn).flatten(1).sum(1)            # linear critic, ∇ = wn for every sample
        assert gradient_penalty(out, x_hat).item() == pytest.approx(expected, abs=1e-5)


def test_interpolates_lie_between_real_and_fake_with_one_alpha_per_sample():
    real, fake = torch.ones(5, 3, 4, 4), -torch.ones(5, 3, 4, 4)
    x_hat = interpolate(real, fake, torch.Generator().manual_seed(0))
    assert x_hat.requires_grad
    per_sample = x_hat.detach().flatten(1)
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert per_sample.abs().max() <= 1
    again = interpolate(real, fake, torch.Generator().manual_seed(0))
    assert torch.equal(x_hat, again)


def test_cls_loss_sees_only_the_known_slice():
    layout = LabelLayout([CELEBA, RAFD])
    logits = torch.randn(4, 13)
    celeba = torch.randint(0, 2, (4, 5)).float()
    rafd = torch.eye(8)[[0, 3, 5, 7]]
    l_celeba, l_rafd = cls_loss(layout, 0, logits, celeba), cls_loss(layout, 1, logits, rafd)
    other = logits.clone()
    other[:, 5:] = torch.randn(4, 8) * 10
    assert torch.equal(cls_loss(layout, 0, other, celeba), l_celeba)
    other = logits.clone()
    other[:, :5] = torch.randn(4, 5) * 10
    assert torch.equal(cls_loss(layout, 1, other, rafd), l_rafd)


# ------------------------------------------------------------------------- schedule

def test_linear_decay_lr():
    base, n, decay = 1e-4, 200_000, 100_000
    assert linear_decay_lr(0, base, n, decay) == base
    assert linear_decay_lr(n - decay, base, n, decay) == base
    assert linear_decay_lr(n - decay // 2, base, n, decay) == pytest.approx(base / 2)
    assert linear_decay_lr(n - 1, base, n, decay) == pytest.approx(0.0, abs=base * 1e-5)
    assert linear_decay_lr(n, base, n, decay) == 0.0
    assert linear_decay_lr(5, base, 10, 0) == base            # no decay
    assert linear_decay_lr(0, base, 60, 100) == base          # decay longer than the run: clipped
    lrs = [linear_decay_lr(s, base, 10, 4) for s in range(10)]
    assert lrs == sorted(lrs, reverse=True)


def test_step_sets_and_reports_the_scheduled_lr():
    cfg = dataclasses.replace(tiny_cfg(num_iters_decay=10, g_lr=2e-4, d_lr=1e-4), num_iters=20)
    nets, optims = build_v1(cfg, COLOURS)
    out = train_step(nets, optims, blobs(4, torch.Generator().manual_seed(0)), cfg, 15, COLOURS)
    assert out["lr/g"] == pytest.approx(1e-4) and out["lr/d"] == pytest.approx(5e-5)
    assert optims.g.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert optims.d.param_groups[0]["lr"] == pytest.approx(5e-5)


# ------------------------------------------------------------------------- the step

def test_n_critic_gates_the_generator_and_sync_grads_is_called():
    cfg = tiny_cfg(n_critic=3)
    nets, optims = build_v1(cfg, COLOURS)
    g, data = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    for step in range(6):
        synced = []
        g_before, d_before = params(nets.G), params(nets.D)
        out = train_step(nets, optims, blobs(4, data), cfg, step, COLOURS,
                         sync_grads=lambda m: synced.append(m), generator=g)
        g_step = (step + 1) % 3 == 0
        assert not same(params(nets.D), d_before)
        assert same(params(nets.G), g_before) != g_step
        assert synced == ([nets.D, nets.G] if g_step else [nets.D])
        assert {"D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp", "D/loss", "lr/g", "lr/d"} <= set(out)
        assert ({"G/loss_fake", "G/loss_rec", "G/loss_cls", "G/loss"} <= set(out)) == g_step
        assert all(isinstance(v, float) for v in out.values())
    assert all(p.requires_grad for p in nets.D.parameters())   # D unfrozen after the G step


def test_joint_step_leaves_the_other_datasets_classifier_rows_alone():
    layout = LabelLayout([CELEBA, RAFD])
    cfg = tiny_cfg()
    nets, optims = build_v1(cfg, layout)
    assert nets.G.c_dim == 15 and nets.D.conv_cls.out_channels == 13
    cls_w = nets.D.conv_cls.weight.detach().clone()
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1, "label": torch.randint(0, 2, (4, 5)).float()}
    train_step(nets, optims, batch, cfg, 0, layout, dataset_idx=0, generator=torch.Generator().manual_seed(0))
    w = nets.D.conv_cls.weight.detach()
    assert torch.equal(w[5:], cls_w[5:])          # RaFD rows: no gradient from a CelebA batch
    assert not torch.equal(w[:5], cls_w[:5])
    out = train_step(nets, optims, {"image": batch["image"], "label": torch.eye(8)[[1, 2, 3, 4]]}, cfg, 1,
                     layout, dataset_idx=1, generator=torch.Generator().manual_seed(0))
    assert "G/loss_cls" in out


def run_three_steps(cfg, layout=COLOURS):
    nets, optims = build_v1(cfg, layout)
    g, data = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    outs = [train_step(nets, optims, blobs(4, data), cfg, s, layout, generator=g) for s in range(3)]
    return nets, optims, outs


def test_same_seeds_give_bit_identical_weights():
    cfg = tiny_cfg(n_critic=2)
    (n1, o1, out1), (n2, o2, out2) = run_three_steps(cfg), run_three_steps(cfg)
    assert out1 == out2
    for a, b in [(n1.G, n2.G), (n1.D, n2.D)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    n3, _, _ = run_three_steps(dataclasses.replace(cfg, seed=1))
    assert not same(params(n3.G), params(n1.G))


def test_uint8_batch_trains_exactly_like_its_float_batch():
    # The training stream ships uint8; the step converts it where it runs, to the same numbers.
    cfg = tiny_cfg(n_critic=1)
    u8 = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    labels = torch.eye(3)[[0, 1, 2, 0]]
    runs = []
    for image in (u8, (u8.float() - 127.5) * float(np.float32(1 / 127.5))):
        nets, optims = build_v1(cfg, COLOURS)
        out = train_step(nets, optims, {"image": image, "label": labels}, cfg, 0, COLOURS,
                         generator=torch.Generator().manual_seed(0))
        runs.append((out, params(nets.G), params(nets.D)))
    assert runs[0][0] == runs[1][0]
    assert same(runs[0][1], runs[1][1]) and same(runs[0][2], runs[1][2])


def test_build_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    build_v1(tiny_cfg(), COLOURS)
    assert torch.equal(torch.get_rng_state(), state)


def test_nan_input_raises_before_any_weight_changes():
    cfg = tiny_cfg(n_critic=1)
    nets, optims = build_v1(cfg, COLOURS)
    train_step(nets, optims, blobs(4, torch.Generator().manual_seed(0)), cfg, 0, COLOURS)   # Adam has state
    g_before, d_before = params(nets.G), params(nets.D)
    opt_before = copy.deepcopy(optims.d.state_dict())
    batch = blobs(4, torch.Generator().manual_seed(1))
    batch["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="at step 1") as err:
        train_step(nets, optims, batch, cfg, 1, COLOURS)
    assert err.value.step == 1 and err.value.name.startswith("D/")
    assert same(params(nets.G), g_before) and same(params(nets.D), d_before)
    after = optims.d.state_dict()["state"]
    assert all(torch.equal(after[k]["exp_avg"], opt_before["state"][k]["exp_avg"]) for k in after)


def test_bf16_autocast_and_channels_last_run_and_stay_close():
    cfg = tiny_cfg(n_critic=1)
    _, _, ref = run_three_steps(cfg)
    nets, _, fast = run_three_steps(dataclasses.replace(cfg, amp_bf16=True, channels_last=True))
    assert nets.G.main[0].weight.is_contiguous(memory_format=torch.channels_last)
    for key in ("D/loss_cls", "D/loss_gp", "G/loss_rec", "G/loss_cls"):
        assert fast[0][key] == pytest.approx(ref[0][key], rel=0.05, abs=0.02), key


def test_translate_and_translation_grid():
    layout = LabelLayout([CELEBA, RAFD])
    nets, _ = build_v1(tiny_cfg(), layout)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[1., 0, 0, 1, 0], [0, 0, 1, 0, 1]])
    one = translate(nets.G, x, layout.to_model_label(0, labels[:1])[0])
    assert one.shape == x.shape and not one.requires_grad
    grid, names = translation_grid(nets.G, x, layout, 0, labels)
    assert grid.shape == (2, 3, 16, 16 * 14)
    assert names == ["input"] + layout.all_target_names()
    assert torch.equal(grid[..., :16], x)


def test_a_short_run_learns_to_translate_colours():
    """240 steps on colour blobs: fakes end up classified (and coloured) as their targets.

    Over 16 seeds of this setup the last G cls losses were <= 0.1 and the colour accuracy >= 0.88,
    so the bounds below hold with margin on other CPUs' numerics too."""
    cfg = dataclasses.replace(tiny_cfg(g_conv_dim=8, d_conv_dim=8, n_critic=2, g_lr=2e-3, d_lr=2e-3),
                              num_iters=240, batch_size=16)
    nets, optims = build_v1(cfg, COLOURS)
    g, data = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    test = blobs(60, torch.Generator().manual_seed(99))
    targets = torch.eye(3)[torch.arange(60) % 3]

    def colour_accuracy() -> float:
        fake = translate(nets.G, test["image"], targets)
        return (fake.mean((2, 3)).argmax(1) == targets.argmax(1)).float().mean().item()

    before = colour_accuracy()
    g_cls = []
    for step in range(cfg.num_iters):
        out = train_step(nets, optims, blobs(16, data), cfg, step, COLOURS, generator=g)
        if "G/loss_cls" in out:
            g_cls.append(out["G/loss_cls"])
    early, late = sum(g_cls[:10]) / 10, sum(g_cls[-10:]) / 10
    assert early > 0.9                  # ~log 3: D cannot tell the fakes' targets apart yet
    assert late < 0.3 and late < early / 3
    assert before < 0.5 and colour_accuracy() > 0.75


# ------------------------------------------------------------------------- G EMA

def test_without_ema_there_is_no_ema_generator():
    nets, _ = build_v1(tiny_cfg(), COLOURS)
    assert nets.G_ema is None and nets.G_eval is nets.G


def test_ema_generator_is_the_running_average_of_g_after_each_g_step():
    cfg = tiny_cfg(ema_beta=0.75, n_critic=2)
    nets, optims = build_v1(cfg, COLOURS)
    assert nets.G_eval is nets.G_ema and same(params(nets.G_ema), params(nets.G))
    g = torch.Generator().manual_seed(0)
    expected = params(nets.G)
    for step in range(4):
        before = params(nets.G_ema)
        train_step(nets, optims, blobs(4, g), cfg, step, COLOURS)
        if (step + 1) % 2:                        # D-only step: the average does not move
            assert same(params(nets.G_ema), before)
            continue
        expected = [0.75 * e + 0.25 * p for e, p in zip(expected, params(nets.G))]
        for got, want in zip(params(nets.G_ema), expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert not same(params(nets.G_ema), params(nets.G))
    assert not any(p.requires_grad for p in nets.G_ema.parameters())
