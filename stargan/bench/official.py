"""The official StarGAN / StarGAN v2 training iteration, timed beside ours (variant ``official`` of
``stargan bench train``), on the same random device-resident batches at the same settings.

The official files are not part of this project (StarGAN v2's code is CC BY-NC 4.0): they are
written by ``benchmarks/official/fetch.sh`` into the git-ignored ``benchmarks/official/src`` and
carried to the GPU machine; this module imports them from there and never copies them.

- v1 (yunjey/stargan): ``Solver.train`` is one inline loop with the data loader and logging in it,
  so :func:`official_v1_iteration` repeats the body of one iteration line for line with their
  networks, optimizers and their solver's ``gradient_penalty`` / ``classification_loss`` /
  ``reset_grad`` — the per-iteration ``.item()`` logging reads included (that is how their loop
  runs); the labels stay on the host as their loader yields them.
- v2 (clovaai/stargan-v2): ``core/solver.py``'s module-level ``compute_d_loss`` / ``compute_g_loss``
  / ``moving_average`` with the nets of their ``build_model`` (``nn.DataParallel``-wrapped, as theirs),
  their optimizers and the body of their ``Solver.train`` iteration (λ_ds decay included).

Shims for a current torch and a machine without their data/metrics stack live here, never in their
files: a ``munch.Munch`` if the package is missing, stand-ins for the modules ``core/solver.py``
imports but the iteration does not use (``core.checkpoint``, ``core.data_loader``, ``core.utils``,
``metrics.eval``), and for ``torchvision.utils`` / ``skimage.filters`` when those do not import.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch

from stargan.bench.runners import CELEBA_ATTRS, Runner, random_v1_batches, random_v2_batches
from stargan.config import TrainConfig
from stargan.errors import StarganError

DEFAULT_SRC = Path("benchmarks/official/src")
V1_FILES = ("stargan_v1/model.py", "stargan_v1/solver.py")
V2_FILES = ("stargan_v2/core/__init__.py", "stargan_v2/core/model.py", "stargan_v2/core/solver.py",
            "stargan_v2/core/wing.py")


class OfficialCodeMissing(StarganError, FileNotFoundError):
    """The official files are not where the harness looks (fetch.sh was not run or not carried)."""


def require(src: Path, model: str) -> Path:
    """``src`` if it holds the official files of ``model``, else one clear error naming fetch.sh."""
    src = Path(src)
    missing = [f for f in (V1_FILES if model == "v1" else V2_FILES) if not (src / f).is_file()]
    if missing:
        raise OfficialCodeMissing(
            f"official StarGAN{'' if model == 'v1' else ' v2'} code not found: {src / missing[0]} is missing. "
            "Run `bash benchmarks/official/fetch.sh` (it writes benchmarks/official/src from the git mirrors) "
            "and carry benchmarks/official/src to the GPU machine, or pass --official-src")
    return src


# ------------------------------------------------------------------------------- shims

def _module(name: str, **attrs: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__path__ = []                       # importable as a package too (``metrics.eval``)
    return mod


def _unused(what: str):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{what} is a stand-in of stargan.bench.official: the benchmark does not use it")
    return fail


class _Munch(dict):
    """``munch.Munch`` as the official code uses it: a dict with attribute access."""

    def __getattr__(self, k: str):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k: str, v: object) -> None:
        self[k] = v


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - e.g. a torchvision build that does not match torch
        return False


def _v1_stubs() -> dict[str, types.ModuleType]:
    if _importable("torchvision.utils"):
        return {}
    utils = _module("torchvision.utils", save_image=_unused("torchvision.utils.save_image"))
    return {"torchvision": _module("torchvision", utils=utils), "torchvision.utils": utils}


def _v2_stubs() -> dict[str, types.ModuleType]:
    stubs = {"core.checkpoint": _module("core.checkpoint", CheckpointIO=_unused("CheckpointIO")),
             "core.data_loader": _module("core.data_loader", InputFetcher=_unused("InputFetcher")),
             "core.utils": _module("core.utils", he_init=_unused("core.utils.he_init")),
             "metrics.eval": _module("metrics.eval", calculate_metrics=_unused("calculate_metrics"))}
    stubs["metrics"] = _module("metrics", eval=stubs["metrics.eval"])
    if not _importable("munch"):
        stubs["munch"] = _module("munch", Munch=_Munch)
    if not _importable("skimage.filters"):                   # wing.py: only for w_hpf > 0
        filters = _module("skimage.filters", gaussian=_unused("skimage.filters.gaussian"))
        stubs.update({"skimage": _module("skimage", filters=filters), "skimage.filters": filters})
    return stubs


@contextlib.contextmanager
def _official_imports(root: Path, stubs: dict[str, types.ModuleType]) -> Iterator[None]:
    """While the official files import: ``root`` first on ``sys.path`` and the stand-ins in
    ``sys.modules``; afterwards both are taken back out, with every module loaded from ``root``
    (their top-level names — ``model``, ``solver``, ``core`` — would shadow anything else)."""
    saved = {k: sys.modules[k] for k in stubs if k in sys.modules}
    sys.modules.update(stubs)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for k in stubs:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
        for k, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None)
            if f and Path(f).resolve().is_relative_to(root.resolve()):
                del sys.modules[k]


def load_v1(src: Path = DEFAULT_SRC) -> types.ModuleType:
    """yunjey/stargan's ``solver`` module (with its ``model``)."""
    root = require(src, "v1") / "stargan_v1"
    with _official_imports(root, _v1_stubs()):
        return importlib.import_module("solver")


def load_v2(src: Path = DEFAULT_SRC) -> tuple[types.ModuleType, types.ModuleType]:
    """clovaai/stargan-v2's ``core.model`` and ``core.solver`` modules."""
    root = require(src, "v2") / "stargan_v2"
    with _official_imports(root, _v2_stubs()):
        return importlib.import_module("core.model"), importlib.import_module("core.solver")


# ------------------------------------------------------------------------------------ v1

def _v1_config(cfg: TrainConfig) -> SimpleNamespace:
    """The options their ``Solver.__init__`` reads (main.py's defaults, our bench's sizes)."""
    v = cfg.v1
    return SimpleNamespace(
        c_dim=len(CELEBA_ATTRS), c2_dim=8, image_size=cfg.image_size, g_conv_dim=v.g_conv_dim,
        d_conv_dim=v.d_conv_dim, g_repeat_num=v.g_repeat_num, d_repeat_num=v.d_repeat_num,
        lambda_cls=float(v.lambda_cls), lambda_rec=float(v.lambda_rec), lambda_gp=v.lambda_gp, dataset="CelebA",
        batch_size=cfg.batch_size, num_iters=cfg.num_iters, num_iters_decay=v.num_iters_decay, g_lr=v.g_lr,
        d_lr=v.d_lr, n_critic=v.n_critic, beta1=v.beta1, beta2=v.beta2, resume_iters=None,
        selected_attrs=CELEBA_ATTRS, test_iters=cfg.num_iters, use_tensorboard=False, log_dir="", sample_dir="",
        model_save_dir="", result_dir="", log_step=10, sample_step=1000, model_save_step=10000, lr_update_step=1000)


def official_v1_iteration(solver, x_real: torch.Tensor, label_org: torch.Tensor, i: int) -> dict[str, float]:
    """Iteration ``i`` of yunjey/stargan ``Solver.train`` (single dataset, CelebA), from "Generate
    target domain labels randomly" to the G update, as written there (LR decay and logging
    output are outside the timed body there too)."""
    dev = solver.device
    rand_idx = torch.randperm(label_org.size(0))
    label_trg = label_org[rand_idx]
    c_org, c_trg = label_org.clone(), label_trg.clone()
    x_real, c_org, c_trg = x_real.to(dev), c_org.to(dev), c_trg.to(dev)
    label_org, label_trg = label_org.to(dev), label_trg.to(dev)
    # 2. Train the discriminator
    out_src, out_cls = solver.D(x_real)
    d_loss_real = - torch.mean(out_src)
    d_loss_cls = solver.classification_loss(out_cls, label_org, solver.dataset)
    x_fake = solver.G(x_real, c_trg)
    out_src, out_cls = solver.D(x_fake.detach())
    d_loss_fake = torch.mean(out_src)
    alpha = torch.rand(x_real.size(0), 1, 1, 1).to(dev)
    x_hat = (alpha * x_real.data + (1 - alpha) * x_fake.data).requires_grad_(True)
    out_src, _ = solver.D(x_hat)
    d_loss_gp = solver.gradient_penalty(out_src, x_hat)
    d_loss = d_loss_real + d_loss_fake + solver.lambda_cls * d_loss_cls + solver.lambda_gp * d_loss_gp
    solver.reset_grad()
    d_loss.backward()
    solver.d_optimizer.step()
    loss = {"D/loss_real": d_loss_real.item(), "D/loss_fake": d_loss_fake.item(),
            "D/loss_cls": d_loss_cls.item(), "D/loss_gp": d_loss_gp.item()}
    # 3. Train the generator
    if (i + 1) % solver.n_critic == 0:
        x_fake = solver.G(x_real, c_trg)
        out_src, out_cls = solver.D(x_fake)
        g_loss_fake = - torch.mean(out_src)
        g_loss_cls = solver.classification_loss(out_cls, label_trg, solver.dataset)
        x_reconst = solver.G(x_fake, c_org)
        g_loss_rec = torch.mean(torch.abs(x_real - x_reconst))
        g_loss = g_loss_fake + solver.lambda_rec * g_loss_rec + solver.lambda_cls * g_loss_cls
        solver.reset_grad()
        g_loss.backward()
        solver.g_optimizer.step()
        loss.update({"G/loss_fake": g_loss_fake.item(), "G/loss_rec": g_loss_rec.item(),
                     "G/loss_cls": g_loss_cls.item()})
    return loss


def v1_runner(cfg: TrainConfig, device: torch.device, src: Path = DEFAULT_SRC) -> Runner:
    solver_mod = load_v1(src)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        with contextlib.redirect_stdout(io.StringIO()):        # their Solver prints both networks
            solver = solver_mod.Solver(None, None, _v1_config(cfg))
    solver.device = device
    solver.G.to(device)
    solver.D.to(device)
    batches = random_v1_batches(cfg, device)
    host_labels = [b["label"].cpu() for b in batches]           # their loader yields CPU labels

    def step(i: int) -> dict:
        return official_v1_iteration(solver, batches[i % len(batches)]["image"], host_labels[i % len(batches)], i)

    return step, cfg.v1.n_critic


# ------------------------------------------------------------------------------------ v2

def _v2_args(cfg: TrainConfig, num_domains: int) -> SimpleNamespace:
    v2 = cfg.v2
    if v2.w_hpf > 0:
        raise ValueError("the official v2 benchmark runs w_hpf 0 (no FAN weights on the GPU machine)")
    return SimpleNamespace(img_size=cfg.image_size, style_dim=v2.style_dim, latent_dim=v2.latent_dim,
                           num_domains=num_domains, w_hpf=0.0, wing_path=None, lambda_reg=v2.lambda_reg,
                           lambda_sty=float(v2.lambda_sty), lambda_ds=float(v2.lambda_ds), lambda_cyc=v2.lambda_cyc,
                           ds_iter=v2.ds_iter, lr=v2.lr, f_lr=v2.f_lr, beta1=v2.beta1, beta2=v2.beta2,
                           weight_decay=v2.weight_decay)


def v2_runner(cfg: TrainConfig, device: torch.device, src: Path = DEFAULT_SRC, num_domains: int = 3) -> Runner:
    from stargan.models.v2 import he_init          # the same Kaiming init as their utils.he_init

    core_model, core_solver = load_v2(src)
    args = _v2_args(cfg, num_domains)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        nets, nets_ema = core_model.build_model(args)
        for net in list(nets.values()) + list(nets_ema.values()):
            net.to(device)
        for net in nets.values():                 # theirs: EMA copies made before the init
            he_init(net)
    optims = {name: torch.optim.Adam(net.parameters(), lr=args.f_lr if name == "mapping_network" else args.lr,
                                     betas=[args.beta1, args.beta2], weight_decay=args.weight_decay)
              for name, net in nets.items()}
    batches = random_v2_batches(cfg, device, num_domains)
    initial_lambda_ds = args.lambda_ds
    compute_d_loss, compute_g_loss = core_solver.compute_d_loss, core_solver.compute_g_loss

    def reset_grad() -> None:
        for opt in optims.values():
            opt.zero_grad()

    def step(i: int) -> dict:
        """One iteration of clovaai/stargan-v2 ``Solver.train`` (w_hpf 0: no masks)."""
        b = batches[i % len(batches)]
        x_real, y_org = b["x_src"].clone(), b["y_src"]      # their fetcher hands a fresh tensor
        x_ref, x_ref2, y_trg = b["x_ref"], b["x_ref2"], b["y_ref"]
        z_trg = torch.randn(x_real.size(0), args.latent_dim).to(device)
        z_trg2 = torch.randn(x_real.size(0), args.latent_dim).to(device)
        masks = None
        d_loss, d_losses_latent = compute_d_loss(nets, args, x_real, y_org, y_trg, z_trg=z_trg, masks=masks)
        reset_grad()
        d_loss.backward()
        optims["discriminator"].step()
        d_loss, d_losses_ref = compute_d_loss(nets, args, x_real, y_org, y_trg, x_ref=x_ref, masks=masks)
        reset_grad()
        d_loss.backward()
        optims["discriminator"].step()
        g_loss, g_losses_latent = compute_g_loss(nets, args, x_real, y_org, y_trg, z_trgs=[z_trg, z_trg2],
                                                 masks=masks)
        reset_grad()
        g_loss.backward()
        optims["generator"].step()
        optims["mapping_network"].step()
        optims["style_encoder"].step()
        g_loss, g_losses_ref = compute_g_loss(nets, args, x_real, y_org, y_trg, x_refs=[x_ref, x_ref2], masks=masks)
        reset_grad()
        g_loss.backward()
        optims["generator"].step()
        for name in ("generator", "mapping_network", "style_encoder"):
            core_solver.moving_average(nets[name], nets_ema[name], beta=0.999)
        if args.lambda_ds > 0:
            args.lambda_ds -= (initial_lambda_ds / args.ds_iter)
        return {f"{k}/{n}": v for k, d in (("D/latent", d_losses_latent), ("D/ref", d_losses_ref),
                                            ("G/latent", g_losses_latent), ("G/ref", g_losses_ref))
                for n, v in d.items()}

    return step, 1


def runner(model: str, cfg: TrainConfig, device: torch.device, src: Path = DEFAULT_SRC) -> Runner:
    return v1_runner(cfg, device, src) if model == "v1" else v2_runner(cfg, device, src)
