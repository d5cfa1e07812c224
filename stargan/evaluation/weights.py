"""Finding the pretrained weights the standard metrics need, or saying plainly why not.

Lookup order for a file: ``evaluate.weights_dir`` (relative paths from the repository root),
then ``$STARGAN_WEIGHTS_DIR``, then ``~/.cache/stargan``. When none has it and
``evaluate.download_weights`` is true, it is downloaded from its official URL with the
project's resumable, verified downloader into the first of those folders that is set (else
the cache). When that fails too, :class:`WeightsUnavailable` carries the reason and the
setting that fixes it; metrics turn it into an "unavailable" entry, never a made-up number.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stargan.config import EvaluateConfig
from stargan.evaluation.errors import MetricUnavailable

ENV = "STARGAN_WEIGHTS_DIR"
CACHE = Path("~/.cache/stargan")


@dataclass(frozen=True)
class WeightFile:
    filename: str
    url: str
    what: str
    sha256_prefix: str | None = None      # torch-hub style: the hash prefix in the file name


FID_INCEPTION = WeightFile("pt_inception-2015-12-05-6726825d.pth",
                           "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                           "pt_inception-2015-12-05-6726825d.pth",
                           "FID Inception (pytorch-fid's port of TF inception-2015-12-05)", "6726825d")
LPIPS_ALEX_LIN = WeightFile("alex.pth",
                            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
                            "LPIPS v0.1 linear layers for AlexNet")
ALEXNET = WeightFile("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                     "torchvision AlexNet ImageNet weights (LPIPS backbone)", "7be5be79")


class WeightsUnavailable(MetricUnavailable):
    """Pretrained weights that are neither on disk nor downloadable."""


def search_dirs(cfg: EvaluateConfig, repo_root: Path) -> list[Path]:
    dirs = []
    if cfg.weights_dir:
        p = Path(cfg.weights_dir).expanduser()
        dirs.append(p if p.is_absolute() else Path(repo_root) / p)
    if os.environ.get(ENV):
        dirs.append(Path(os.environ[ENV]).expanduser())
    dirs.append(CACHE.expanduser())
    return dirs


def fix_text(files: list[WeightFile]) -> str:
    names = " and ".join(f"{f.filename} ({f.url})" for f in files)
    return (f"set evaluate.weights_dir (or ${ENV}) to a folder containing {names}, "
            "or run once with network access and evaluate.download_weights: true")


def _verify(path: Path, spec: WeightFile) -> None:
    if spec.sha256_prefix:
        from stargan.files import sha256_file

        digest = sha256_file(path)
        if not digest.startswith(spec.sha256_prefix):
            raise WeightsUnavailable(f"{path} is not the official {spec.filename}: sha256 {digest[:16]}... does "
                                     f"not start with {spec.sha256_prefix}", fix_text([spec]))


def find_weights(spec: WeightFile, cfg: EvaluateConfig, repo_root: Path, *, timeout_s: float = 30.0) -> Path:
    """Path of ``spec`` on disk (downloading it if allowed), else raise :class:`WeightsUnavailable`."""
    dirs = search_dirs(cfg, repo_root)
    for d in dirs:
        if (d / spec.filename).is_file():
            path = d / spec.filename
            _verify(path, spec)
            return path
    looked = ", ".join(str(d) for d in dirs)
    if not cfg.download_weights:
        raise WeightsUnavailable(f"{spec.what}: {spec.filename} not found in {looked}; downloads are off "
                                 "(evaluate.download_weights: false)", fix_text([spec]))
    from stargan.data.download import DownloadError, download

    dest = dirs[0] / spec.filename
    try:
        download(spec.url, dest, timeout_s=timeout_s, retries=1, backoff_s=0.5, progress=False)
    except (DownloadError, OSError) as e:
        raise WeightsUnavailable(f"{spec.what}: {spec.filename} not found in {looked}, and downloading "
                                 f"{spec.url} failed ({str(e).split('; ')[0][:200]})", fix_text([spec])) from None
    _verify(dest, spec)
    return dest
