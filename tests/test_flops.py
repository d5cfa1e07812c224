"""FLOP counts (stargan/flops.py) against the reference's per-image forward figures, counted on the
meta device (no memory, no arithmetic), and a counted training-style double backward."""
import pytest
import torch

from stargan.flops import count_flops, v1_forward_gflops, v2_forward_gflops
from stargan.losses import gradient_penalty
from stargan.models.v1 import Discriminator


def test_v1_forward_gflops_match_the_reference_at_128px():
    g = v1_forward_gflops(128, c_dim=5)
    assert g["G"] == pytest.approx(19.9, abs=0.05)
    assert g["D"] == pytest.approx(1.37, abs=0.01)


def test_v2_forward_gflops_match_the_reference_at_256px():
    g = v2_forward_gflops(256, num_domains=3)
    assert g["G"] == pytest.approx(97.3, abs=0.05)
    assert g["E"] == pytest.approx(33.1, abs=0.05)
    assert g["D"] == pytest.approx(33.1, abs=0.05)
    assert g["F"] < 0.01


def test_counts_scale_with_batch_and_include_the_penalty_double_backward():
    D = Discriminator(16, 4, 3, 3)
    x = torch.randn(2, 3, 16, 16)
    fwd1 = count_flops(lambda: D(x[:1]))
    fwd2 = count_flops(lambda: D(x))
    assert fwd2 == 2 * fwd1 > 0

    def gp_step():
        x_hat = x.clone().requires_grad_(True)
        gradient_penalty(D(x_hat)[0], x_hat).backward()

    # forward + input-gradient backward + the double backward that trains D: several forwards' worth
    assert count_flops(gp_step) > 3 * fwd2
