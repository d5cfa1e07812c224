"""FID Inception and LPIPS: load state dicts with the official key names from a weights folder
(random weights saved under the official file names; nothing is downloaded), and the
"unavailable" path when the files are missing."""
from pathlib import Path

import pytest
import torch

from stargan.config import EvaluateConfig
from stargan.evaluation.inception import FEATURE_DIM, FIDInceptionV3, load_fid_inception, to_fid_input
from stargan.evaluation.lpips import LPIPS, load_lpips, mean_pairwise
from stargan.evaluation.weights import ALEXNET, FID_INCEPTION, LPIPS_ALEX_LIN, WeightsUnavailable, find_weights

OFFICIAL_INCEPTION_KEYS = [            # a sample of pytorch-fid / torchvision Inception3 names
    "Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Conv2d_4a_3x3.bn.bias",
    "Mixed_5b.branch5x5_2.conv.weight", "Mixed_6a.branch3x3dbl_3.conv.weight",
    "Mixed_6e.branch7x7dbl_5.bn.running_mean", "Mixed_7a.branch7x7x3_4.conv.weight",
    "Mixed_7c.branch3x3dbl_3b.bn.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight", "fc.bias"]


def _no_prefix_hash(cfg_dir: Path) -> EvaluateConfig:
    return EvaluateConfig(weights_dir=str(cfg_dir), download_weights=False)


@pytest.fixture
def no_hash_check(monkeypatch):
    """Random weights cannot match the official sha256 prefixes; skip that check only."""
    monkeypatch.setattr("stargan.evaluation.weights._verify", lambda path, spec: None)


def test_inception_loads_official_key_names_and_gives_2048_features(tmp_path, no_hash_check):
    torch.manual_seed(0)
    state = FIDInceptionV3().state_dict()
    assert all(k in state for k in OFFICIAL_INCEPTION_KEYS)
    assert state["fc.weight"].shape == (1008, 2048)
    # older files have no BatchNorm num_batches_tracked: loading must still be strict otherwise
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / FID_INCEPTION.filename)
    path = find_weights(FID_INCEPTION, _no_prefix_hash(tmp_path), tmp_path)
    assert path == tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    net = load_fid_inception(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = net(to_fid_input(x))
    assert feats.shape == (2, FEATURE_DIM) and torch.isfinite(feats).all()
    assert torch.equal(net.state_dict()["Mixed_7c.branch_pool.conv.weight"], state["Mixed_7c.branch_pool.conv.weight"])


def test_a_wrong_state_dict_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        load_fid_inception(tmp_path / "bad.pth")


def test_missing_weights_are_unavailable_with_reason_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("STARGAN_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr("stargan.evaluation.weights.CACHE", tmp_path / "empty-cache")
    with pytest.raises(WeightsUnavailable) as e:
        find_weights(FID_INCEPTION, _no_prefix_hash(tmp_path / "nothing"), tmp_path)
    assert "pt_inception-2015-12-05-6726825d.pth not found" in e.value.reason
    assert "evaluate.weights_dir" in e.value.fix and FID_INCEPTION.url in e.value.fix


def test_env_folder_is_searched(tmp_path, monkeypatch, no_hash_check):
    monkeypatch.setenv("STARGAN_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / LPIPS_ALEX_LIN.filename).write_bytes(b"x")
    assert find_weights(LPIPS_ALEX_LIN, EvaluateConfig(download_weights=False), tmp_path / "repo") == \
        tmp_path / LPIPS_ALEX_LIN.filename


def _save_lpips_files(folder: Path) -> None:
    torch.manual_seed(1)
    net = LPIPS()
    alex = {f"features.{k}": v for k, v in net.net.features.state_dict().items()}
    alex["classifier.1.weight"] = torch.zeros(4096, 9216)[:1]      # the torchvision file has a head too
    torch.save(alex, folder / ALEXNET.filename)
    lin = {f"lin{i}.model.1.weight": getattr(net, f"lin{i}").model[1].weight.abs() for i in range(5)}
    torch.save(lin, folder / LPIPS_ALEX_LIN.filename)


def test_lpips_zero_on_identical_and_symmetric(tmp_path, no_hash_check):
    _save_lpips_files(tmp_path)
    cfg = _no_prefix_hash(tmp_path)
    net = load_lpips(find_weights(LPIPS_ALEX_LIN, cfg, tmp_path), find_weights(ALEXNET, cfg, tmp_path))
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(net(a, a), torch.zeros(3), atol=1e-7)
    assert torch.allclose(net(a, b), net(b, a), atol=1e-6)
    assert torch.all(net(a, b) > 0)
    small = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1        # below AlexNet's minimum: upsampled
    assert net(small, small.flip(-1)).shape == (2,)
    assert mean_pairwise(net, [a, b, a]).shape == (3,)
