"""The one place that names the datasets: where each comes from and what its files look like.

A :class:`Source` says how to obtain a dataset (generate it, download an official archive, or
take a local folder/archive), which on-disk layout the result has (see ``formats.py``), whether
its images are already aligned and what centre crop the official code applies, and which folder
inside the archive is the dataset root. ``resolve(name, spec)`` merges a ``data.datasets.<name>``
entry of params with its registry entry into the :class:`ResolvedSource` the download stage and
the align stage act on. Adding a dataset is one new entry in :data:`REGISTRY`.

Official checksums: neither StarGAN repository publishes checksums for its archives, so every
``sha256`` below is None. A download then records the sha256 it computed in ``SOURCE.json`` and
says how to pin it (``data.datasets.<name>.sha256``); a checksum is never invented here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from typing import TYPE_CHECKING

from stargan.errors import StarganError

if TYPE_CHECKING:     # the config imports this registry, not the other way round
    from stargan.config import DatasetSpec

#: On-disk formats of raw datasets (stargan/data/formats.py reads each).
LAYOUTS = ("celeba", "rafd", "folders")


class SourceError(StarganError, ValueError):
    """A dataset entry that cannot be resolved to something to fetch."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str                    # "generated" | "http" | "local"
    layout: str | None           # the layout the data comes in; None = the spec decides
    url: str | None = None       # direct-download URL (http sources)
    archive: str | None = None   # "zip" | "tar" | None (http sources)
    aligned: bool = False        # images are already aligned (centre crop, no landmark warp)
    crop: int = 0                # official centre crop in raw pixels; 0 = the whole image
    inner: str | None = None     # folder inside the archive that is the dataset root
    sha256: str | None = None    # published checksum; None = none published (see module doc)
    needs_path: bool = False     # only obtainable by hand (licence): data.datasets.<name>.path
    doc: str = ""


REGISTRY: dict[str, Source] = {s.name: s for s in (
    Source("synthetic", "generated", layout=None,
           doc="rendered faces in the real CelebA / RaFD formats (stargan.data.synthetic); "
               "layout celeba or rafd"),
    Source("celeba", "http", layout="celeba",
           url="https://www.dropbox.com/s/d1kjpkqklf0uw77/celeba.zip?dl=1", archive="zip",
           aligned=True, crop=178, inner="celeba",
           doc="StarGAN v1 download.sh: img_align_celeba (178x218) as celeba/images/ + "
               "list_attr_celeba.txt; the official loader centre-crops 178"),
    Source("celeba_hq", "http", layout="folders",
           url="https://www.dropbox.com/s/f7pvjij2xlpff59/celeba_hq.zip?dl=1", archive="zip",
           aligned=True, crop=0, inner="celeba_hq",
           doc="StarGAN v2 download.sh: celeba_hq/{train,val}/{female,male}/, 1024x1024 aligned"),
    Source("afhq", "http", layout="folders",
           url="https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1", archive="zip",
           aligned=True, crop=0, inner="afhq",
           doc="StarGAN v2 download.sh: afhq/{train,val}/{cat,dog,wild}/, 512x512"),
    Source("afhq_v2", "http", layout="folders",
           url="https://www.dropbox.com/s/vkzjokiwof5h8w6/afhq_v2.zip?dl=1", archive="zip",
           aligned=True, crop=0, inner="afhq_v2",
           doc="StarGAN v2 download.sh (2021): AFHQ v2, Lanczos-resampled PNGs, 512x512"),
    Source("rafd", "local", layout="rafd", aligned=True, crop=0, needs_path=True,
           doc="Radboud Faces Database: request it at https://rafd.socsci.ru.nl, then point "
               "data.datasets.<name>.path at the folder or archive ([train|test/]<expression>/*.jpg, "
               "or the flat Rafd*_<expression>_<gaze>.jpg files as distributed)"),
    Source("local", "local", layout=None, needs_path=True,
           doc="any folder or .zip/.tar/.tar.gz/.tgz archive in one of the layouts"),
)}


def names() -> list[str]:
    return list(REGISTRY)


def get_source(name: str) -> Source:
    """The registry entry for ``name``; an unknown name raises an error listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SourceError(f"unknown dataset source {name!r}; known sources: {', '.join(REGISTRY)}") from None


def direct_url(url: str) -> str:
    """Dropbox share links (``?dl=0``) serve an HTML preview; ``?dl=1`` serves the file."""
    parts = urlsplit(url)
    if parts.hostname and parts.hostname.endswith("dropbox.com"):
        query = [(k, "1" if k == "dl" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        if not any(k == "dl" for k, _ in query):
            query.append(("dl", "1"))
        return urlunsplit(parts._replace(query=urlencode(query)))
    return url


@dataclass(frozen=True)
class ResolvedSource:
    """What to fetch for one ``data.datasets.<name>`` entry, registry defaults merged with params."""
    name: str                    # the dataset key
    source: Source
    layout: str
    mode: str                    # "generate" | "download" | "local"
    url: str | None              # http mode
    path: Path | None            # local mode: folder or archive
    sha256: str | None           # expected checksum (params pin, else the registry's), lowercase hex
    aligned: bool
    crop: int                    # centre crop in raw pixels; 0 = whole image
    inner: str | None
    attributes: tuple[str, ...] = ()   # label order, for the layout's reader
    missing: str = "error"       # celeba layout: listed images absent -> "error" | "skip"
    follow_links: bool = False   # local folders: follow links that leave the folder


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def resolve(name: str, spec: DatasetSpec) -> ResolvedSource:
    """Merge a params entry with its registry entry; every inconsistency names the params key."""
    key = f"data.datasets.{name}"
    src = get_source(spec.source)
    if spec.layout not in LAYOUTS:
        raise SourceError(f"{key}.layout: {spec.layout!r}; choose one of {', '.join(LAYOUTS)}")
    if src.layout and spec.layout != src.layout:
        raise SourceError(f"{key}.layout: source {src.name} comes in the {src.layout!r} layout, "
                          f"params say {spec.layout!r}; set {key}.layout: {src.layout}")
    if src.kind == "generated" and spec.layout not in ("celeba", "rafd"):
        raise SourceError(f"{key}.layout: the synthetic source writes the celeba or rafd layout, "
                          f"not {spec.layout!r}")
    sha = spec.sha256.strip().lower() if spec.sha256 else src.sha256
    if sha is not None and not _HEX64.match(sha):
        raise SourceError(f"{key}.sha256: {spec.sha256!r} is not a sha256 (64 hex digits)")
    path = Path(spec.path).expanduser() if spec.path else None
    url = direct_url(spec.url) if spec.url else src.url
    if src.kind == "generated":
        mode = "generate"
    elif path is not None:
        mode = "local"            # e.g. an official archive downloaded by hand: registry metadata still applies
    elif url is not None:
        mode = "download"
    else:
        raise SourceError(f"{key}.path: source {src.name} needs a local folder or archive. "
                          + src.doc.replace("<name>", name))
    if mode == "local" and not path.exists():
        raise SourceError(f"{key}.path: {path} does not exist (a folder or a "
                          ".zip/.tar/.tar.gz/.tgz archive; relative paths start at the current folder)")
    return ResolvedSource(name=name, source=src, layout=spec.layout, mode=mode,
                          url=url if mode == "download" else None,
                          path=path if mode == "local" else None, sha256=sha,
                          aligned=spec.aligned or src.aligned, crop=spec.crop or src.crop,
                          inner=src.inner, attributes=tuple(spec.attributes), missing=spec.missing,
                          follow_links=spec.follow_links)


def official_crop(spec: DatasetSpec) -> int:
    """Centre crop (raw pixels) for a dataset entry: ``crop`` from params, else the official one."""
    return spec.crop or get_source(spec.source).crop


def is_aligned(spec: DatasetSpec) -> bool:
    """Raw images are pre-aligned: set in params, or known for the source (CelebA, AFHQ, ...)."""
    return spec.aligned or get_source(spec.source).aligned
