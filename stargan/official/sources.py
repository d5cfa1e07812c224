"""Where the officially released networks come from, what each holds, and how to fetch them.

The model counterpart of the dataset registry (:mod:`stargan.data.sources`), kept in its own module
because no pipeline stage reads it (a table in ``data/sources.py`` would mark five stages stale for
no data change). Adding a released model is one new :class:`ModelSource` in :data:`MODELS`.

URLs are the ones in the official ``download.sh`` scripts (yunjey/stargan at 94dd002, clovaai/
stargan-v2 at 875b70a; ``dl=0`` share links are turned into direct downloads by
:func:`stargan.data.sources.direct_url`).

Checksums and sizes: neither repository, its README or its issue threads publish a checksum or a
byte size for these files, and no other public record of them was found (searched: the official
repositories, their issues, third-party download scripts and mirrors). So every ``sha256`` and
``size`` below is None; none is invented. A download then cannot be verified against a published
value: the import checks the file's *structure* instead (every tensor name and shape of the
architecture, weights-only loading, finite values) and records the file's sha256 in the checkpoint
and as a tag of the registered model version, so the exact bytes a model came from stay known.
Pin a value you trust with ``--sha256`` (or in this table) and the download is checked against it.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from stargan.data.download import download
from stargan.data.formats import RAFD_EXPRESSIONS
from stargan.data.sources import direct_url
from stargan.errors import StarganError
from stargan.files import write_bytes
from stargan.models.fan import WING_URL

V1_LICENCE = "MIT (yunjey/stargan: code and pretrained models)"
V2_LICENCE = "CC BY-NC 4.0 (clovaai/stargan-v2: code, pretrained models and AFHQ; non-commercial use only)"
V2_LICENCE_URL = "https://creativecommons.org/licenses/by-nc/4.0/"
CELEBA_ATTRS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")


class OfficialSourceError(StarganError, ValueError):
    """An unknown preset, or an official file that cannot be fetched or found."""


@dataclass(frozen=True)
class ModelSource:
    """One released model: what it is (model kind, dataset, domains, size) and where it comes from.

    ``files``: role -> file name (v1: ``generator``/``discriminator``; v2: ``nets_ema``, and the
    ``wing`` FAN weights a ``w_hpf > 0`` model needs). ``url`` is the download: a zip holding the
    files (``archive``) or the one file itself. ``paper``: the published numbers of this model
    (see docs/official-models.md for their sources)."""
    name: str
    model: str                          # "v1" | "v2"
    dataset: str                        # the data.datasets key and dataset source it was trained on
    layout: str                         # that dataset's on-disk layout (stargan.data.formats)
    label_names: tuple[str, ...]        # v1: labels in G's order; v2: domains in index order
    label_kind: str                     # "multi" | "onehot"
    image_size: int
    licence: str
    files: dict[str, str]
    url: str | None = None              # None: not released (a model trained with the official code)
    archive: bool = False               # url is a zip of ``files``
    w_hpf: float = 0.0
    loss_weights: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None           # of the download at ``url``; None = none published (module doc)
    size: int | None = None
    paper: dict[str, str] = field(default_factory=dict)
    doc: str = ""

    @property
    def licence_tag(self) -> str:
        return "MIT" if self.model == "v1" else "CC-BY-NC-4.0"


MODELS: dict[str, ModelSource] = {m.name: m for m in (
    ModelSource("v1-celeba-128", "v1", "celeba", "celeba", CELEBA_ATTRS, "multi", 128, V1_LICENCE,
                files={"generator": "200000-G.ckpt", "discriminator": "200000-D.ckpt"},
                url="https://www.dropbox.com/s/7e966qq0nlxwte4/celeba-128x128-5attrs.zip?dl=0", archive=True,
                loss_weights={"lambda_cls": 1.0, "lambda_rec": 10.0},
                doc="StarGAN, CelebA 128x128, 5 attributes (download.sh pretrained-celeba-128x128)"),
    ModelSource("v1-celeba-256", "v1", "celeba", "celeba", CELEBA_ATTRS, "multi", 256, V1_LICENCE,
                files={"generator": "200000-G.ckpt", "discriminator": "200000-D.ckpt"},
                url="https://www.dropbox.com/s/zdq6roqf63m0v5f/celeba-256x256-5attrs.zip?dl=0", archive=True,
                loss_weights={"lambda_cls": 1.0, "lambda_rec": 10.0},
                doc="StarGAN, CelebA 256x256, 5 attributes (download.sh pretrained-celeba-256x256)"),
    ModelSource("v1-rafd-128", "v1", "rafd", "rafd", RAFD_EXPRESSIONS, "onehot", 128, V1_LICENCE,
                files={"generator": "200000-G.ckpt", "discriminator": "200000-D.ckpt"},
                loss_weights={"lambda_cls": 1.0, "lambda_rec": 10.0},
                doc="StarGAN, RaFD 128x128, 8 expressions: no pretrained file was released; for a model "
                    "trained with the official code (--dataset RaFD --c_dim 8)"),
    ModelSource("v2-celeba-hq", "v2", "celeba_hq", "folders", ("female", "male"), "onehot", 256, V2_LICENCE,
                files={"nets_ema": "100000_nets_ema.ckpt", "wing": "wing.ckpt"},
                url="https://www.dropbox.com/s/96fmei6c93o8b8t/100000_nets_ema.ckpt?dl=0", w_hpf=1.0,
                loss_weights={"lambda_reg": 1.0, "lambda_sty": 1.0, "lambda_ds": 1.0, "lambda_cyc": 1.0},
                paper={"fid_latent": "13.73 ± 0.06", "lpips_latent": "0.4515 ± 0.0006",
                       "fid_reference": "23.84 ± 0.03", "lpips_reference": "0.3880 ± 0.0001"},
                doc="StarGAN v2, CelebA-HQ 256x256, female/male, w_hpf 1 (needs the FAN weights, wing.ckpt)"),
    ModelSource("v2-afhq", "v2", "afhq", "folders", ("cat", "dog", "wild"), "onehot", 256, V2_LICENCE,
                files={"nets_ema": "100000_nets_ema.ckpt"},
                url="https://www.dropbox.com/s/etwm810v25h42sn/100000_nets_ema.ckpt?dl=0", w_hpf=0.0,
                loss_weights={"lambda_reg": 1.0, "lambda_sty": 1.0, "lambda_ds": 2.0, "lambda_cyc": 1.0},
                paper={"fid_latent": "16.18 ± 0.15", "lpips_latent": "0.4501 ± 0.0007",
                       "fid_reference": "19.78 ± 0.01", "lpips_reference": "0.4315 ± 0.0002"},
                doc="StarGAN v2, AFHQ 256x256, cat/dog/wild, w_hpf 0"),
)}


def get_model_source(name: str) -> ModelSource:
    try:
        return MODELS[name]
    except KeyError:
        raise OfficialSourceError(f"unknown official model {name!r}; known: {', '.join(MODELS)}") from None


def fetch(source: ModelSource, cache_dir: Path, *, url: str | None = None, sha256: str | None = None,
          wing_url: str | None = None, timeout_s: float = 60.0, retries: int = 5) -> dict[str, Path]:
    """Download ``source``'s files into ``cache_dir`` (resumable; a file already there is reused)
    and return role -> path. ``url``/``wing_url`` override the registry's (a mirror); ``sha256``
    pins the main download. A zip is opened and only the expected members are copied out."""
    url = url or source.url
    if url is None:
        raise OfficialSourceError(f"{source.name}: {source.doc}; no download exists, pass the files "
                                  f"({', '.join(source.files.values())}) instead of --download")
    cache_dir = Path(cache_dir)
    out: dict[str, Path] = {}
    main = cache_dir / (f"{source.name}.zip" if source.archive else source.files["nets_ema"])
    if not main.exists():
        download(direct_url(url), main, expected_sha256=sha256 or source.sha256, timeout_s=timeout_s, retries=retries)
    if source.archive:
        out.update(_unzip(main, source.files, cache_dir))
    else:
        out["nets_ema"] = main
    if "wing" in source.files:
        wing = cache_dir / source.files["wing"]
        if not wing.exists():
            download(direct_url(wing_url or WING_URL), wing, timeout_s=timeout_s, retries=retries)
        out["wing"] = wing
    return out


def _unzip(archive: Path, files: dict[str, str], dest: Path) -> dict[str, Path]:
    """Copy the members named in ``files`` (matched by base name, wherever they sit in the zip)."""
    try:
        with zipfile.ZipFile(archive) as z:
            by_name = {Path(i.filename).name: i for i in z.infolist() if not i.is_dir()}
            missing = [name for name in files.values() if name not in by_name]
            if missing:
                raise OfficialSourceError(f"{archive}: no {', '.join(missing)} inside (it holds "
                                          f"{', '.join(sorted(by_name)) or 'nothing'})")
            return {role: write_bytes(dest / name, z.read(by_name[name])) for role, name in files.items()}
    except zipfile.BadZipFile as e:
        raise OfficialSourceError(f"{archive}: not a zip file ({e}); delete it and download again") from None
