"""Data parallelism is exact: 2 workers on half a batch each == 1 worker on the whole batch.

This proves the two halves of our data parallelism without Ray:

- the gradient averaging of :func:`stargan.training.distributed.make_sync_grads` (one flat
  all-reduce per net, no DDP wrapper, because WGAN-GP / R1 differentiate through D twice);
- that every loss of the v1 and v2 steps is a per-sample *mean*, so the average of the ranks'
  half-batch gradients is the full-batch gradient (a sum-reduced loss would break this).

Two processes are spawned with ``torch.multiprocessing`` and join a gloo group on 127.0.0.1.
The steps' randomness is made identical between the two set-ups by giving each rank its half
of precomputed draws: v1's targets (a permutation *within* the batch, which no per-rank RNG can
reproduce) and its per-sample GP alphas; v2's latent codes z, z2. Compared: the synced gradients
of every net at every optimizer step (exactly what the averaging must produce), the reported
losses (mean over ranks == full batch), and the weights after a few steps.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from stargan.config import TrainConfig, V1Config
from stargan.training.labels import LabelLayout

WORLD = 2
BATCH = 8          # global batch; each rank gets BATCH // WORLD
STEPS_V1 = 3
STEPS_V2 = 2


# ------------------------------------------------------------------------ shared inputs

def v1_cfg() -> TrainConfig:
    # n_critic=1: G is updated (and synced) at every step too.
    return TrainConfig(image_size=16, batch_size=BATCH, num_iters=100, seed=0,
                       v1=V1Config(g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, n_critic=1,
                                   num_iters_decay=0, g_lr=1e-3, d_lr=1e-3))


def v2_cfg() -> TrainConfig:
    cfg = TrainConfig(image_size=16, batch_size=BATCH, seed=0)
    for k, v in dict(latent_dim=4, style_dim=8, max_conv_dim=16, mapping_hidden=16, lr=1e-3, f_lr=1e-3).items():
        setattr(cfg.v2, k, v)
    return cfg


def v1_inputs(steps: int) -> list[dict]:
    """Per step: a batch (3 binary attributes), the permuted targets and one GP alpha per sample."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(steps):
        labels = torch.randint(0, 2, (BATCH, 3), generator=g).float()
        out.append({"image": torch.rand(BATCH, 3, 16, 16, generator=g) * 2 - 1, "label": labels,
                    "targets": labels[torch.randperm(BATCH, generator=g)],
                    "alpha": torch.rand(BATCH, 1, 1, 1, generator=g)})
    return out


def v2_inputs(steps: int) -> list[dict]:
    g = torch.Generator().manual_seed(4321)
    out = []
    for _ in range(steps):
        out.append({"x_src": torch.rand(BATCH, 3, 16, 16, generator=g) * 2 - 1,
                    "y_src": torch.randint(0, 2, (BATCH,), generator=g),
                    "x_ref": torch.rand(BATCH, 3, 16, 16, generator=g) * 2 - 1,
                    "x_ref2": torch.rand(BATCH, 3, 16, 16, generator=g) * 2 - 1,
                    "y_ref": torch.randint(0, 2, (BATCH,), generator=g),
                    "z": torch.randn(BATCH, 4, generator=g), "z2": torch.randn(BATCH, 4, generator=g)})
    return out


def half(t, rank: int, world: int):
    n = t.shape[0] // world
    return t[rank * n:(rank + 1) * n]


class FixedTargets(LabelLayout):
    """A layout whose training targets are set from outside (the precomputed permutation)."""
    targets: torch.Tensor

    def sample_targets(self, dataset_idx, labels, generator=None):
        return self.targets


class _ZDraws:
    """Stands in for the step's torch.Generator: ``torch.randn(..., generator=this)`` returns the
    precomputed z codes in order (see :func:`_patched_randn`)."""
    device = torch.device("cpu")

    def __init__(self, codes: list[torch.Tensor]):
        self.codes = list(codes)


def _patched_randn(real):
    def randn(*args, generator=None, **kw):
        if isinstance(generator, _ZDraws):
            return generator.codes.pop(0).clone()
        return real(*args, generator=generator, **kw)
    return randn


def _recording(sync, log: list):
    """Wrap a sync_grads: run it, then record the (averaged) gradients it left behind."""
    def rec(module):
        sync(module)
        log.append([p.grad.detach().clone() if p.grad is not None else None for p in module.parameters()])
    return rec


# ------------------------------------------------------------------------ the two runs

def run_v1(rank: int, world: int) -> dict:
    from stargan.training import v1_step
    from stargan.training.distributed import make_sync_grads
    from stargan.training.nets import build_v1

    cfg = v1_cfg()
    layout = FixedTargets([("attrs", ["a", "b", "c"], "multi")])
    nets, optims = build_v1(cfg, layout)
    grads: list = []
    sync = _recording(make_sync_grads(), grads)
    real_interpolate = v1_step.interpolate
    scalars = []
    try:
        for step, inp in enumerate(v1_inputs(STEPS_V1)):
            layout.targets = half(inp["targets"], rank, world)
            alpha = half(inp["alpha"], rank, world)
            v1_step.interpolate = lambda x_real, x_fake, *_, a=alpha, **__: (
                a * x_real.detach() + (1 - a) * x_fake.detach()).requires_grad_(True)
            batch = {"image": half(inp["image"], rank, world), "label": half(inp["label"], rank, world)}
            scalars.append(v1_step.train_step(nets, optims, batch, cfg, step, layout, 0, sync))
    finally:
        v1_step.interpolate = real_interpolate
    return {"scalars": scalars, "grads": grads,
            "weights": {k: v.detach().clone() for k, v in {**_prefixed("G", nets.G), **_prefixed("D", nets.D)}.items()}}


def run_v2(rank: int, world: int) -> dict:
    from stargan.training.nets import build_v2
    from stargan.training import v2_step
    from stargan.training.distributed import make_sync_grads

    cfg = v2_cfg()
    nets, optims = build_v2(cfg, num_domains=2)
    grads: list = []
    sync = _recording(make_sync_grads(), grads)
    real = torch.randn
    scalars = []
    torch.randn = _patched_randn(real)
    try:
        for step, inp in enumerate(v2_inputs(STEPS_V2)):
            batch = {k: half(inp[k], rank, world) for k in ("x_src", "y_src", "x_ref", "x_ref2", "y_ref")}
            draws = _ZDraws([half(inp["z"], rank, world), half(inp["z2"], rank, world)])
            scalars.append(v2_step.train_step(nets, optims, batch, cfg, step, sync, draws))
            assert not draws.codes, "the step drew a different number of latent codes than expected"
    finally:
        torch.randn = real
    weights = {}
    for name in ("G", "F", "E", "D", "G_ema", "F_ema", "E_ema"):
        weights.update({k: v.detach().clone() for k, v in _prefixed(name, getattr(nets, name)).items()})
    return {"scalars": scalars, "grads": grads, "weights": weights}


def _prefixed(name: str, module) -> dict:
    return {f"{name}.{k}": v for k, v in module.state_dict().items()}


def _rank_main(rank: int, world: int, rdv: str, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"            # loopback only
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        torch.save({"v1": run_v1(rank, world), "v2": run_v2(rank, world)}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    import torch.multiprocessing as mp

    d = tmp_path_factory.mktemp("dp")
    mp.start_processes(_rank_main, args=(WORLD, str(d / "rdv"), str(d)), nprocs=WORLD, start_method="spawn",
                       join=True)
    ranks = [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"ranks": ranks, "single": {"v1": run_v1(0, 1), "v2": run_v2(0, 1)}}


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("model", ["v1", "v2"])
def test_two_workers_on_half_batches_equal_one_worker_on_the_whole_batch(results, model):
    single = results["single"][model]
    ranks = [r[model] for r in results["ranks"]]
    # 1. every sync left the same averaged gradient on both ranks, equal to the full-batch gradient
    #    (relative to the net's largest gradient: parameters whose true gradient is 0, such as a
    #    bias before an instance norm, carry float noise only)
    assert len(single["grads"]) == len(ranks[0]["grads"]) == len(ranks[1]["grads"]) > 0
    for i, g_single in enumerate(single["grads"]):
        a, b, g = (torch.cat([t.reshape(-1) for t in grads if t is not None])
                   for grads in (ranks[0]["grads"][i], ranks[1]["grads"][i], g_single))
        assert torch.equal(a, b), f"sync {i}: ranks hold different gradients after the all-reduce"
        assert _max_rel(a, g) < 1e-4, f"sync {i}: averaged gradient != full-batch gradient ({_max_rel(a, g):.2e})"
    # 2. the reported losses: the mean over ranks is the full-batch loss
    for step, s in enumerate(single["scalars"]):
        for k, v in s.items():
            if k.startswith(("lr/", "G/lambda_ds")) or k.endswith("grad_norm"):
                continue
            mean = sum(r["scalars"][step][k] for r in ranks) / len(ranks)
            assert mean == pytest.approx(v, rel=1e-4, abs=1e-6), f"step {step} {k}"
        for k in (k for k in s if k.endswith("grad_norm")):       # norms are taken after the sync
            assert ranks[0]["scalars"][step][k] == pytest.approx(v := s[k], rel=1e-4), f"step {step} {k}: {v}"
    # 3. the weights after the steps: identical on both ranks, equal to the single worker's. Adam
    #    divides by sqrt(v): where a gradient is float noise (~1e-9) its step is still ~lr in a
    #    noise-chosen direction, so a few elements may differ by up to lr per step; the rest match.
    lr, steps = 1e-3, len(single["scalars"])
    differ = total = 0
    for k, w in single["weights"].items():
        assert torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]), f"{k}: ranks drifted apart"
        diff = (ranks[0]["weights"][k] - w).abs()
        assert float(diff.max()) <= 2 * lr * steps, f"{k}: weights differ by {float(diff.max()):.2e}"
        differ, total = differ + int((diff > 1e-5).sum()), total + diff.numel()
    assert differ / total < 0.02, f"{differ} of {total} weights differ by more than 1e-5"


def test_summed_losses_would_be_caught():
    """The comparison above is sharp: a gradient that is summed over ranks instead of averaged
    (a classic DDP-by-hand bug) is 2x the full-batch gradient, far outside the tolerance."""
    g = torch.randn(100)
    assert _max_rel(2 * g, g) > 0.5


# ------------------------------------------------------------------------ shared storage

def test_storage_path_accepts_folders_and_uris(tmp_path):
    """train.ray.storage_path: a folder (relative to the repo), a file:// URI (through pyarrow.fs,
    as s3:// or gs:// would be) or an fsspec-only scheme (wrapped for Ray as storage_filesystem)."""
    from stargan.storage import open_storage, ray_run_config_kwargs

    rel = open_storage("ray_results", tmp_path)
    assert rel.local_root == tmp_path / "ray_results" and ray_run_config_kwargs(rel) == {
        "storage_path": str(tmp_path / "ray_results")}
    uri = open_storage((tmp_path / "store").as_uri(), tmp_path)
    assert ray_run_config_kwargs(uri) == {"storage_path": (tmp_path / "store").as_uri()}
    mem = open_storage("memory://bucket/runs", tmp_path)
    kw = ray_run_config_kwargs(mem)
    assert kw["storage_path"] == "/bucket/runs" and kw["storage_filesystem"] is mem.filesystem
    for store in (rel, uri, mem):
        assert not store.exists("run/mlflow_run.json")
        store.write_text("run/mlflow_run.json", '{"run_id": "abc"}')
        assert store.exists("run/mlflow_run.json") and store.read_text("run/mlflow_run.json") == '{"run_id": "abc"}'
    assert (tmp_path / "store" / "run" / "mlflow_run.json").exists()
    with pytest.raises(ValueError, match="train.ray.storage_path: 'nosuch://x' is neither"):
        open_storage("nosuch://x", tmp_path)


@pytest.mark.slow
def test_training_with_a_uri_storage_path_checkpoints_there(tmp_path):
    """`stargan train` with train.ray.storage_path=file:///...: Ray Train writes the checkpoints
    through pyarrow.fs at the URI (the code path of s3:// or gs://) and the run record that a rerun
    resumes from sits beside them, not in the repository. (Resume itself: Ray Train's same-name
    restore, exercised with a folder in test_reliability_dvc.py; the run record's URI round trip
    in test_storage_path_accepts_folders_and_uris.)"""
    import json
    import subprocess
    import sys

    from stargan.training.checkpoint import load_state
    from tiny_project import build_data, env

    store = tmp_path / "shared-store"
    root = build_data(tmp_path / "proj", {"train": {"ray": {"storage_path": store.as_uri()}}})
    proc = subprocess.run([sys.executable, "-m", "stargan.cli", "train"], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    run = store / out["run_name"]
    assert any(p.name.startswith("checkpoint_") for p in run.iterdir()), sorted(p.name for p in run.iterdir())
    assert json.loads((run / "mlflow_run.json").read_text())["run_id"] == out["mlflow_run_id"]
    assert load_state(out["checkpoint"]).step == 6
    assert not (root / "ray_results" / out["run_name"] / "mlflow_run.json").exists()
