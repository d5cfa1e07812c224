"""StarGAN v2 networks: exact official sizes, shapes, blocks and build_v2."""
import pytest
import torch
import torch.nn.functional as F

from stargan.config import ConfigError, TrainConfig
from stargan.models.v2 import (AdaIN, AdainResBlk, Discriminator, Generator, HighPass, MappingNetwork,
                               ResBlk, StyleEncoder)
from stargan.training.nets import build_v2


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("k, w_hpf, expected", [
    # AFHQ setting (3 domains, no high-pass) and CelebA-HQ (2 domains, w_hpf=1); the latter
    # matches the counts printed in the official training log (clovaai/stargan-v2#29).
    (3, 0, (33_892_995, 3_259_072, 20_949_760, 20_852_803)),
    (2, 1, (43_467_395, 2_438_272, 20_916_928, 20_852_290)),
])
def test_parameter_counts_match_official_at_256(k, w_hpf, expected):
    with torch.device("meta"):      # sizes only: no memory, no init cost
        nets = (Generator(256, 64, 512, w_hpf), MappingNetwork(16, 64, k),
                StyleEncoder(256, 64, k, 512), Discriminator(256, k, 512))
    counts = tuple(n_params(m) for m in nets)
    print(f"K={k} w_hpf={w_hpf}: G {counts[0]:,} F {counts[1]:,} E {counts[2]:,} D {counts[3]:,}")
    assert counts == expected


def test_shapes_at_32px_tiny():
    torch.manual_seed(0)
    b, k, sd = 3, 4, 8
    x = torch.randn(b, 3, 32, 32)
    y = torch.tensor([0, 3, 1])
    G, Fm = Generator(32, sd, 16, w_hpf=0), MappingNetwork(5, sd, k, hidden_dim=16)
    E, D = StyleEncoder(32, sd, k, 16), Discriminator(32, k, 16)
    s = Fm(torch.randn(b, 5), y)
    assert s.shape == (b, sd)
    assert E(x, y).shape == (b, sd)
    assert D(x, y).shape == (b,)
    assert G(x, s).shape == x.shape
    # generator with the high-pass skips: masks resized to 32 px inside
    Gh = Generator(32, sd, 16, w_hpf=1)
    masks = (torch.rand(b, 1, 64, 64), torch.rand(b, 1, 64, 64))
    assert Gh(x, s, masks=masks).shape == x.shape
    with pytest.raises(ValueError, match="w_hpf > 0"):
        G(x, s, masks=masks)


def test_domain_heads_select_by_label():
    torch.manual_seed(0)
    Fm = MappingNetwork(4, 6, 3, hidden_dim=8)
    z = torch.randn(2, 4)
    both = Fm(z, torch.tensor([0, 2]))
    torch.testing.assert_close(both[0], Fm(z[:1], torch.tensor([0]))[0])
    torch.testing.assert_close(both[1], Fm(z[1:], torch.tensor([2]))[0])
    assert not torch.allclose(both[1], Fm(z[1:], torch.tensor([1]))[0])


def test_adain_with_zero_style_fc_is_instance_norm():
    torch.manual_seed(0)
    ada = AdaIN(style_dim=8, num_features=5)
    torch.nn.init.zeros_(ada.fc.weight)
    torch.nn.init.zeros_(ada.fc.bias)
    x = torch.randn(2, 5, 7, 7) * 3 + 1
    torch.testing.assert_close(ada(x, torch.randn(2, 8)), F.instance_norm(x))


def test_blocks():
    x = torch.randn(2, 8, 8, 8)
    assert ResBlk(8, 16, normalize=True, downsample=True)(x).shape == (2, 16, 4, 4)
    assert not hasattr(ResBlk(8, 8), "conv1x1")
    blk = AdainResBlk(8, 4, style_dim=3, w_hpf=0, upsample=True)
    assert blk(x, torch.randn(2, 3)).shape == (2, 4, 16, 16)
    # w_hpf > 0: output is the residual path alone
    blk1 = AdainResBlk(8, 4, style_dim=3, w_hpf=1, upsample=True)
    blk1.load_state_dict(blk.state_dict())
    s = torch.randn(2, 3)
    torch.testing.assert_close(blk1(x, s), blk._residual(x, s))


def test_highpass_is_laplacian_and_not_saved():
    hp = HighPass(2.0)
    assert "filter" not in hp.state_dict()          # loads checkpoints with or without it
    assert torch.allclose(hp(torch.ones(1, 3, 5, 5))[..., 1:-1, 1:-1], torch.zeros(1, 3, 3, 3))
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    assert hp(x)[0, 0, 1, 1].item() == 4.0           # 8 / w_hpf
    G = Generator(32, 4, 8, w_hpf=1)
    assert not any("hpf" in k for k in G.state_dict())


def test_non_power_of_two_size_is_refused():
    with pytest.raises(ValueError, match="power-of-two"):
        Generator(96, 8, 16, w_hpf=0)


def tiny_cfg(**v2) -> TrainConfig:
    cfg = TrainConfig(image_size=16)
    for k, v in dict(latent_dim=4, style_dim=8, max_conv_dim=16, mapping_hidden=16, **v2).items():
        setattr(cfg.v2, k, v)
    return cfg


def test_build_v2_ema_starts_from_initialised_nets_and_optimizers():
    torch.manual_seed(0)
    cfg = tiny_cfg(lr=2e-4, f_lr=3e-6, weight_decay=1e-3)
    nets, optims = build_v2(cfg, num_domains=3)
    for name, ema in nets.ema().items():
        net = getattr(nets, name)
        for (k, p), (k2, q) in zip(net.state_dict().items(), ema.state_dict().items()):
            assert k == k2 and torch.equal(p, q)
        assert not any(q.requires_grad for q in ema.parameters())
    # He init: zero biases
    assert all(torch.count_nonzero(m.bias) == 0 for m in nets.D.modules()
               if isinstance(m, torch.nn.Conv2d) and m.bias is not None)
    assert optims.F.param_groups[0]["lr"] == 3e-6
    for opt in (optims.G, optims.E, optims.D):
        g = opt.param_groups[0]
        assert (g["lr"], g["betas"], g["weight_decay"]) == (2e-4, (0.0, 0.99), 1e-3)
    assert nets.fan is None


def test_build_v2_hpf_needs_wing_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"w_hpf>0 needs the FAN landmark weights \(wing.ckpt\)"):
        build_v2(tiny_cfg(w_hpf=1.0), 2)
    with pytest.raises(ConfigError, match="train.v2.w_hpf: 0"):
        build_v2(tiny_cfg(w_hpf=1.0, wing_path=str(tmp_path / "nope.ckpt")), 2)
    wing = tmp_path / "wing.ckpt"
    wing.write_bytes(b"x")
    with pytest.raises(ConfigError, match="wing.ckpt: cannot read it as a weights-only torch file"):
        build_v2(tiny_cfg(w_hpf=1.0, wing_path=str(wing)), 2)       # loading itself: tests/test_fan.py
