"""The training issues' must-shows, on short CPU runs over real synthetic data (built by the
pipeline's own stages): a trained generator moves faces towards their *true* counterfactual.

"Towards" is measured as the issues ask: for a target that changes the face, the translation is
closer in L1 to the re-rendered counterfactual than the untouched input is (``l1_gain > 0``),
for most target domains. The metric is the evaluate stage's own (``counterfactual``), so what is
asserted here is what ``dvc repro`` reports.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stargan.config import load_config
from stargan.evaluation import evaluate_model
from stargan.inference import load_model
from stargan.training.local import fit_local
from tiny_project import build_data, merge, write_params

pytestmark = pytest.mark.slow

#: The default pipeline's CelebA-like set (the tiny project's 160 faces are too few to learn from),
#: 32 px, network sizes and the residual G (input + a learned change), λ_rec 30; n_critic 2 at LR 5e-4
#: (the default trains at n_critic 1, LR 1e-3 now; these settings are what this test was measured at).
#: Measured with the paper's G instead: with λ_rec 10 no target beats the input after 1,500
#: iterations (the small G drifts to input-independent faces), with λ_rec 100 three of five do.
DATA = {"synthetic": {"celeba_images": 1200, "image_size": 96},
        "align": {"image_size": 64, "workers": 2},
        "shard": {"rows_per_group": 128}}
V1 = {"train": {"model": "v1", "datasets": ["celeba"], "image_size": 32, "batch_size": 16, "num_iters": 600,
                "log_every": 100, "sample_every": 600, "checkpoint_every": 300,
                "v1": {"g_conv_dim": 16, "d_conv_dim": 16, "g_repeat_num": 2, "d_repeat_num": 5, "n_critic": 2,
                       "g_lr": 5e-4, "d_lr": 5e-4, "num_iters_decay": 300, "lambda_rec": 30.0, "lambda_cls": 1.0,
                       "residual": True}}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return build_data(tmp_path_factory.mktemp("quality_data"), DATA)


def _train(data_root: Path, dest: Path, overrides: dict):
    """A project sharing ``data_root``'s shards, trained in this process (the loop Ray runs)."""
    shutil.copytree(data_root / "data", dest / "data")
    write_params(dest, merge(DATA, overrides))
    cfg = load_config(dest / "params.yaml")
    fit_local(cfg, dest, device="cpu")
    return dest, cfg, load_model(dest / cfg.train.output_dir / "checkpoint.pt")


@pytest.fixture(scope="module")
def v1_model(data_root, tmp_path_factory):
    return _train(data_root, tmp_path_factory.mktemp("quality_v1"), V1)


def _table(res: dict, keys: list[str]) -> str:
    return "\n".join(f"  {k}: l1 {res[k + '/l1']:.4f} vs input {res[k + '/identity_l1']:.4f}" for k in keys)


def test_v1_translations_are_closer_to_the_true_counterfactual_than_the_input(v1_model):
    root, cfg, model = v1_model
    res = evaluate_model(model, cfg, root, device="cpu", metrics=["counterfactual"])["counterfactual"]
    targets = sorted(k[: -len("/l1_gain")] for k in res if k.startswith("celeba/") and k.count("/") == 2
                     and k.endswith("/l1_gain"))
    assert len(targets) == 5, targets
    print("\n" + _table(res, targets))
    beating = [t for t in targets if res[f"{t}/l1_gain"] > 0]
    assert len(beating) > len(targets) / 2, f"only {beating} beat the identity baseline:\n{_table(res, targets)}"
    assert res["celeba/fraction_beating_identity"] == len(beating) / len(targets)


#: StarGAN v2 with domains = hair colour (black / blond), on the v1 test's data at 16 px (at 32 px
#: the same 600 iterations beat the input by only 0.001-0.005 L1, too thin a margin to assert).
#: λ_cyc = 10 (paper 1) for the same reason as λ_rec above; λ_ds decays to 0 by iteration 300; the
#: EMA is shortened (β 0.99) because the evaluated nets are the EMA ones and 0.999 would still be
#: mostly the initial weights after 600 iterations.
V2 = {"train": {"model": "v2", "datasets": ["celeba"], "image_size": 16, "batch_size": 8, "num_iters": 600,
                "log_every": 100, "sample_every": 600, "checkpoint_every": 300,
                "v2": {"domains": ["Black_Hair", "Blond_Hair"], "latent_dim": 16, "style_dim": 16,
                       "max_conv_dim": 32, "mapping_hidden": 64, "lambda_cyc": 10.0, "ds_iter": 300,
                       "ema_beta": 0.99, "lr": 3e-4, "f_lr": 1e-5}}}


@pytest.fixture(scope="module")
def v2_model(data_root, tmp_path_factory):
    return _train(data_root, tmp_path_factory.mktemp("quality_v2"), V2)


def test_v2_latent_guided_translation_moves_towards_the_counterfactual_and_z_matters(v2_model):
    root, cfg, model = v2_model
    res = evaluate_model(model, cfg, root, device="cpu", metrics=["counterfactual"])["counterfactual"]
    tasks = sorted(k[: -len("/l1_gain")] for k in res if k.startswith("latent/") and k.count("/") == 2
                   and k.endswith("/l1_gain"))
    assert tasks == ["latent/Black_Hair_to_Blond_Hair", "latent/Blond_Hair_to_Black_Hair"]
    print("\n" + _table(res, tasks))
    assert all(res[f"{t}/l1_gain"] > 0 for t in tasks), _table(res, tasks)

    # Diversity: two latent codes, same image and target domain -> visibly different outputs.
    from stargan.evaluation.tasks import EvalContext

    ctx = EvalContext(model=model, cfg=cfg, repo_root=root, device=torch.device("cpu"))
    x = next(ctx.batches("celeba"))["image"][:16]
    g = torch.Generator().manual_seed(0)
    for d in range(model.domains.num_domains):
        y = torch.full((x.size(0),), d, dtype=torch.long)
        z1, z2 = (torch.randn(x.size(0), model.latent_dim, generator=g) for _ in range(2))
        diff = (model.translate_latent(x, y, z1) - model.translate_latent(x, y, z2)).abs().mean().item() / 2
        assert diff > 0.02, f"domain {model.domains.names[d]}: outputs for two z differ by only {diff:.4f}"
