"""The download stage's library: put every dataset of params into ``data/raw/<name>/``.

``fetch_all(cfg)`` walks ``data.datasets``; each entry is resolved against the registry
(``sources.py``) and then generated (synthetic), downloaded over HTTP(S) and extracted, or taken
from a local folder/archive. Whatever the route, the result is assembled in a hidden staging
folder next to the output, parsed with its layout's reader (as the align stage will read it),
``SOURCE.json`` is written into it last, and it is renamed into place, so ``data/raw/<name>/``
with a ``SOURCE.json`` is always complete and readable, and a bad source (images missing or
unlabelled, a link out of the folder, an archive bomb) never replaces a good earlier copy. Error
messages name the user's folder or archive, not the staging copy. An interrupted run leaves a
``.part`` download (resumed next time) and a staging folder (removed next time), never a
half-filled output.

``download(url, dest)`` is the HTTP part: resumable (``Range`` requests onto ``<dest>.part``,
restarting cleanly when the server ignores ``Range``), retried with exponential backoff,
streamed through sha256, with progress on stderr and an atomic final rename. It refuses, with a
message that says what to do: an unreachable host, an HTML page where a file was expected (an
expired Dropbox link), HTTP errors, and a checksum mismatch (the bad file is kept aside as
``<dest>.corrupt`` and never used).

``SOURCE.json`` = ``{"source", "url", "sha256", "bytes", "layout"}`` (+ ``"missing": {"count",
"first"}`` when ``data.datasets.<name>.missing: skip`` left listed images out): for archives (downloaded
or local) the archive's sha256 and size; for folders (local, synthetic) a digest over the
sorted (relative path, file sha256) pairs and the total size. ``url`` is the download URL, the
``file://`` URI of a local path, or ``synthetic:<layout>?<settings>`` for the generator. A run
whose entry still matches ``SOURCE.json`` leaves the folder as it is ("up to date").
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode, urlsplit

from stargan.config import Config, DatasetSpec, SyntheticConfig
from stargan.data.archive import ArchiveError, extract
from stargan.data.formats import (RAFD_EXPRESSIONS, DataFormatError, DatasetIndex, MissingImagesError,
                                   first_names, read_dataset)
from stargan.data.sources import ResolvedSource, SourceError, resolve
from stargan.errors import StarganError
from stargan.files import remove_leftovers, replace_dir, sha256_file, write_json
from stargan.progress import Progress

CHUNK = 1 << 20
SOURCE_FILE = "SOURCE.json"
JUNK = ("__MACOSX", ".DS_Store", "Thumbs.db")
_USER_AGENT = "stargan-download/1.0 (+python urllib)"


class DownloadError(StarganError, RuntimeError):
    """A dataset that could not be fetched; the message names the URL/path and the fix."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- hashing

def _walk_files(root: Path, follow_links: bool = False, name: str = "<name>") -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file under root, sorted; SOURCE.json and junk excluded.

    The digest and the copy both walk with this, so they see the same files. A symbolic link whose
    target stays inside root is followed; one that leaves root is refused unless ``follow_links``
    (``data.datasets.<name>.follow_links``), since it would copy files from elsewhere (``/etc``, a
    home folder) into data/raw; a link to a folder that contains it (a loop) is always refused."""
    top = root.resolve()
    out: list[tuple[str, Path]] = []

    def walk(folder: Path, rel: str, ancestors: tuple[Path, ...]) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            p, r = Path(e.path), rel + e.name
            if e.name in JUNK or r == SOURCE_FILE:
                continue
            if e.is_symlink():
                _check_link(p, top, ancestors, follow_links, name)
            if e.is_dir():
                walk(p, r + "/", ancestors + (p.resolve(),))
            elif e.is_file():
                out.append((r, p))
            else:
                raise DownloadError(f"{p}: not a regular file or folder (a socket, FIFO or device); remove it")

    walk(root, "", (top,))
    return sorted(out)


def _check_link(link: Path, top: Path, ancestors: tuple[Path, ...], follow_links: bool, name: str) -> None:
    """Refuse a broken link, a loop (its target holds a folder being walked) and, unless the user
    trusts links, a way out of the dataset folder ``top``."""
    target = Path(os.path.realpath(link))
    if not target.exists():
        raise DownloadError(f"{link}: a broken symbolic link (to {os.readlink(link)}); remove it or point "
                            "it at the real file")
    if target.is_dir() and any(a.is_relative_to(target) for a in ancestors):
        raise DownloadError(f"{link}: a symbolic link to {target}, a folder that contains the link (a loop); "
                            "remove the link")
    if not follow_links and not target.is_relative_to(top):
        raise DownloadError(f"{link}: a symbolic link to {target}, outside the dataset folder {top}; replace "
                            f"the link with the real file or folder, or set data.datasets.{name}.follow_links: "
                            "true if you trust it")


def tree_digest(root: Path, follow_links: bool = False, name: str = "<name>") -> tuple[str, int]:
    """sha256 over (relative path, file sha256) of a folder, and its total bytes."""
    h, total = hashlib.sha256(), 0
    for rel, p in _walk_files(root, follow_links, name):
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
        total += p.stat().st_size
    return h.hexdigest(), total


# ------------------------------------------------------------------------------------- HTTP

@dataclass(frozen=True)
class DownloadResult:
    path: Path
    sha256: str
    bytes: int


class _Retry(Exception):
    """A transient failure: try again (``progressed``: this attempt received data)."""

    def __init__(self, message: str, progressed: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.progressed, self.unreachable = progressed, unreachable


class _RangeRefused(Exception):
    """HTTP 416 to a resume request; ``total`` is the size the server reports, if any."""

    def __init__(self, total: int | None):
        super().__init__(total)
        self.total = total


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _unreachable(url: str, reason: object) -> DownloadError:
    return DownloadError(f"cannot reach {_host(url)}: {reason}; check the network or use source: local "
                         f"with a path (a folder or archive downloaded by hand from {url})")


def _html_error(url: str) -> DownloadError:
    return DownloadError(f"{url} returned an HTML page instead of the file: typical of an expired or "
                         "moved Dropbox/Drive link, a quota page or a login wall. Open the URL in a "
                         "browser; if the file is still there, download it by hand and use source: "
                         "local with its path, or set a working data.datasets.<name>.url")


def _looks_like_html(head: bytes) -> bool:
    head = head.lstrip()[:64].lower()
    return head.startswith((b"<!doctype", b"<html", b"<head"))


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _open(url: str, offset: int, timeout_s: float):
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            m = re.search(r"/(\d+)", e.headers.get("Content-Range", "") or "")
            raise _RangeRefused(int(m.group(1)) if m else None) from None
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason} from {url}") from None
        hint = {404: " (the file is gone: the link may have expired; see the README for mirrors)",
                403: " (access denied: the link may have expired or hit its download quota)",
                401: " (the server wants a login: download it by hand and use source: local)"}
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}{hint.get(e.code, '')}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, str):                       # e.g. "unknown url type"
            raise DownloadError(f"{url}: {reason}") from None
        if isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or (
                isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)):
            raise _unreachable(url, reason) from None     # offline or no such host: retrying won't help
        raise _Retry(f"{reason or type(reason).__name__}", unreachable=True) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Retry(f"{e or type(e).__name__}", unreachable=True) from None


def _attempt(url: str, part: Path, timeout_s: float, progress: bool) -> tuple[str, int]:
    """One request: continue ``part`` from its size; return (sha256, size) when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout_s)
    except _RangeRefused as r:
        if r.total == offset:              # we already hold every byte
            return sha256_file(part), offset
        part.unlink(missing_ok=True)
        raise _Retry(f"server refused to resume at byte {offset}; restarting from scratch",
                     progressed=True) from None
    with resp:
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if ctype.startswith(("text/html", "application/xhtml")):
            raise _html_error(url)
        total: int | None = None
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server answered a resume at byte {offset} with an unexpected range "
                             f"{resp.headers.get('Content-Range')!r}; restarting", progressed=True)
            total = int(m.group(3)) if m.group(3) != "*" else None
        else:
            if offset:
                _log(f"  {_host(url)} ignores Range requests (HTTP {resp.status}): restarting from byte 0")
                offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        h = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        bar = Progress(f"  {part.name.removesuffix('.part')}", total, "MiB", scale=2**-20, every_s=5.0,
                       enabled=progress)
        received, done = 0, offset
        with open(part, "ab" if offset else "wb") as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(f"connection lost after {done} bytes ({e or type(e).__name__})",
                                 progressed=received > 0) from None
                if not chunk:
                    break
                if done == 0 and _looks_like_html(chunk):
                    f.close()
                    part.unlink(missing_ok=True)
                    raise _html_error(url)
                f.write(chunk)
                h.update(chunk)
                received += len(chunk)
                done += len(chunk)
                bar.update(done)
    if total is not None and done < total:
        raise _Retry(f"connection closed after {done} of {total} bytes", progressed=received > 0)
    if total is not None and done > total:
        part.unlink(missing_ok=True)
        raise _Retry(f"received {done} bytes, more than the announced {total}; restarting")
    return h.hexdigest(), done


def download(url: str, dest: Path, *, expected_sha256: str | None = None, timeout_s: float = 60.0,
             retries: int = 5, backoff_s: float = 1.0, progress: bool = True) -> DownloadResult:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``), verify, and rename into place atomically.

    Transient failures (timeouts, dropped connections, HTTP 5xx/429) are retried up to
    ``retries`` times in a row with exponential backoff; an attempt that received data resets
    the count. Everything else raises :class:`DownloadError` at once.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        _log(f"  resuming {part} ({part.stat().st_size} bytes already here)")
    failures = 0
    while True:
        try:
            sha, size = _attempt(url, part, timeout_s, progress)
            break
        except _Retry as r:
            failures = 1 if r.progressed else failures + 1
            if failures > retries:
                if r.unreachable:
                    raise _unreachable(url, f"{r} (after {retries} retries)") from None
                kept = f"; {part.stat().st_size} bytes kept in {part}, a re-run resumes" if part.exists() else ""
                raise DownloadError(f"{url}: {r}; gave up after {retries} retries{kept}") from None
            wait = min(backoff_s * 2 ** (failures - 1), 60.0)
            _log(f"  {'cannot reach ' + _host(url) + ': ' if r.unreachable else ''}{r}; "
                 f"retry {failures}/{retries} in {wait:.1f}s")
            time.sleep(wait)
    if expected_sha256 and sha != expected_sha256.lower():
        corrupt = dest.with_name(dest.name + ".corrupt")
        os.replace(part, corrupt)
        raise DownloadError(f"checksum mismatch for {url}: expected sha256 {expected_sha256.lower()}, got "
                            f"{sha} ({size} bytes). The file is kept aside as {corrupt} and not used. "
                            "If the file legitimately changed, update the pinned sha256; else delete "
                            "it and re-run")
    os.replace(part, dest)
    return DownloadResult(dest, sha, size)


# ------------------------------------------------------------------------------- placement

def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _link_or_copy_tree(src: Path, dst: Path, follow_links: bool = False, name: str = "<name>") -> str:
    """Mirror ``src`` into ``dst`` with hard links (same filesystem) or copies; src is untouched."""
    dst.mkdir(parents=True, exist_ok=True)
    how = "hard-linked"
    for rel, p in _walk_files(src, follow_links, name):
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(os.path.realpath(p), out)      # link(2) would link a symlink itself, not its file
        except OSError:
            shutil.copy2(p, out)
            how = "copied"
    return how


def _is_data_dir(name: str) -> bool:
    return name in ("train", "val", "test", "img_celeba", "img_align_celeba", "images") or \
        name.lower() in RAFD_EXPRESSIONS


def pick_root(root: Path, inner: str | None = None) -> Path:
    """The dataset root inside an extracted archive or a folder: the registry's inner folder if
    present, then down through single wrapper folders (``celeba.zip`` -> ``celeba/``)."""
    if inner and (root / inner).is_dir():
        root = root / inner
    while True:
        entries = [e for e in root.iterdir() if e.name not in JUNK]
        if len(entries) == 1 and entries[0].is_dir() and not _is_data_dir(entries[0].name):
            root = entries[0]
        else:
            return root


_RAFD_FILE = re.compile(r"^Rafd(\d{3})_(\d+)_[A-Za-z-]+_[A-Za-z]+_([a-z]+)_[a-z]+\.(jpe?g|png)$", re.I)


def arrange_rafd(root: Path) -> None:
    """RaFD as distributed (flat ``Rafd090_01_Caucasian_female_angry_frontal.jpg``) -> the
    ``<expression>/`` layout. Kept: cameras 045/090/135 (the paper's 4,824 images); profiles
    (000/180) are left out, and said so."""
    if any(e.is_dir() and e.name not in JUNK for e in root.iterdir()):
        return
    files = [p for p in root.iterdir() if p.is_file() and _RAFD_FILE.match(p.name)]
    if not files:
        return
    dropped = 0
    for p in files:
        m = _RAFD_FILE.match(p.name)
        expression = m.group(3).lower()
        if m.group(1) in ("000", "180") or expression not in RAFD_EXPRESSIONS:
            p.unlink()      # a link/copy in the staging folder; the user's file is untouched
            dropped += 1
            continue
        (root / expression).mkdir(exist_ok=True)
        os.rename(p, root / expression / p.name)
    _log(f"  RaFD: sorted {len(files) - dropped} images into <expression>/ folders; left out {dropped} "
         "(profile cameras 000/180 or unknown expressions), as in the StarGAN paper's 4,824-image set")


# --------------------------------------------------------------------------------- datasets

def _synthetic_url(layout: str, cfg: SyntheticConfig) -> str:
    """A pseudo-URL naming what generated the set, so a settings change is not 'up to date'."""
    other = "rafd_identities" if layout == "celeba" else "celeba_images"
    return f"synthetic:{layout}?" + urlencode(sorted((k, v) for k, v in dataclasses.asdict(cfg).items() if k != other))


def _read_source(dest: Path) -> dict | None:
    try:
        return json.loads((dest / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_current(dest: Path, source: str, url: str | None, layout: str, sha256: str | None) -> bool:
    rec = _read_source(dest)
    return bool(rec) and rec.get("source") == source and rec.get("url") == url and \
        rec.get("layout") == layout and (sha256 is None or rec.get("sha256") == sha256)


class _Stage:
    """The staging folder of one dataset under ``data/raw``; a crashed run's leftovers are removed."""

    def __init__(self, raw_root: Path, name: str):
        self.dest = raw_root / name
        self.work = raw_root / f".{name}.partial"
        raw_root.mkdir(parents=True, exist_ok=True)
        _rmtree(self.work)
        remove_leftovers(self.dest)

    def commit(self, root: Path, record: dict) -> None:
        """``root`` (the staging folder or a folder inside it) with its SOURCE.json becomes ``dest``."""
        for junk in JUNK:
            _rmtree(root / junk)
        write_json(root / SOURCE_FILE, record)     # a new directory entry: never writes through a hard link
        replace_dir(root, self.dest)
        _rmtree(self.work)

    def abort(self) -> None:
        _rmtree(self.work)


def _no_checksum_note(name: str, where: str, sha: str) -> None:
    _log(f"  note: no published sha256 for {where}; recorded the computed one in SOURCE.json. To pin it "
         f"(so a changed file fails instead of passing silently), set data.datasets.{name}.sha256: {sha}")


# ------------------------------------------------------------------------------ validation

@dataclass(frozen=True)
class _Origin:
    """Where the staged files came from, so a message names the user's files, not the staging copy."""
    staged: Path                 # the staging folder (``data/raw/.<name>.partial``)
    place: str                   # the user's folder, or the archive file / URL the files came from
    folder: bool = False         # place is a folder that staged mirrors (else staged holds its members)
    downloaded: bool = False     # place is an archive this stage downloaded: deleting it fetches it anew

    def say(self, msg: str) -> str:
        """Every staged path in ``msg`` as ``<folder>/<rel>``, or ``<member> in <archive>``."""
        def user_path(m: re.Match) -> str:
            rel, line = m.group(1).lstrip("/"), m.group(2) or ""
            if self.folder:
                return str(Path(self.place, rel)) + line
            return f"{rel}{line} in {self.place}" if rel else f"{self.place}{line}"
        return re.sub(re.escape(str(self.staged)) + r"((?:/[^\s:,;()'\"]+)*)(:\d+)?", user_path, msg)


def _read(rs: ResolvedSource, root: Path) -> DatasetIndex:
    """The dataset at ``root`` read exactly as the align stage reads data/raw/<name>."""
    return read_dataset(root, rs.layout, list(rs.attributes), rs.name, rs.missing)


def _check_staged(rs: ResolvedSource, root: Path, origin: _Origin) -> DatasetIndex:
    """Parse the staged copy as the align stage will, so a bad source fails before it replaces data/raw."""
    try:
        return _read(rs, root)
    except MissingImagesError as e:
        if not origin.downloaded:
            raise DownloadError(origin.say(str(e))) from None
        raise DownloadError(f"{origin.place} is incomplete: {len(e.absent)} of the {e.listed} images listed in "
                            f"its {e.list_file.name} are not in it ({first_names(e.absent)}); delete "
                            f"{origin.place} and re-run the download stage, or set data.datasets.{rs.name}."
                            "missing: skip to use the images it has") from None
    except DataFormatError as e:
        raise DownloadError(origin.say(str(e))) from None


def _commit(rs: ResolvedSource, stage: _Stage, root: Path, record: dict, status: str, origin: _Origin) -> dict:
    """Validate the staged dataset, then put it in place (the old copy stays if validation fails).
    Listed images left out under ``missing: skip`` are recorded in SOURCE.json as
    ``"missing": {"count", "first"}`` (the first 10 keys)."""
    index = _check_staged(rs, root, origin)
    if index.skipped:
        record = {**record, "missing": {"count": len(index.skipped), "first": index.skipped[:10]}}
    stage.commit(root, record)
    index.records = [dataclasses.replace(r, path=stage.dest / r.path.relative_to(root)) for r in index.records]
    return {"status": status, **record, "index": index}


def _up_to_date(rs: ResolvedSource, stage: _Stage, source: str, url: str | None, sha256: str | None) -> dict | None:
    """The result for a data/raw copy that still matches its source and still reads, else None:
    a copy that no longer reads (files deleted from data/raw, ``missing`` set back to error) is
    fetched again, so any error then names the user's own files."""
    if not _is_current(stage.dest, source, url, rs.layout, sha256):
        return None
    try:
        index = _read(rs, stage.dest)
    except DataFormatError:
        _log(f"{rs.name}: {stage.dest} matches its source but no longer reads as data.datasets.{rs.name} "
             "says; fetching it again")
        return None
    return {"status": "up to date", **_read_source(stage.dest), "index": index}


# ---------------------------------------------------------------------------------- fetching

def _fetch(rs: ResolvedSource, cfg: Config, stage: _Stage, base: Path) -> dict:
    name, layout = rs.name, rs.layout
    if rs.mode == "generate":
        url = _synthetic_url(layout, cfg.synthetic)
        if done := _up_to_date(rs, stage, "synthetic", url, None):
            return done
        from stargan.data import synthetic    # lazy: the HTTP/archive paths do not need it
        writer = synthetic.write_celeba_like if layout == "celeba" else synthetic.write_rafd_like
        _log(f"{name}: generating a synthetic {layout}-layout set")
        writer(stage.work, cfg.synthetic)
        sha, size = tree_digest(stage.work)
        record = {"source": "synthetic", "url": url, "sha256": sha, "bytes": size, "layout": layout}
        return _commit(rs, stage, stage.work, record, "generated", _Origin(stage.work, url))

    if rs.mode == "download":
        if done := _up_to_date(rs, stage, rs.source.name, rs.url, rs.sha256):
            return done
        cache = base / cfg.download.cache_dir if cfg.download.cache_dir else base / cfg.data.root / "downloads"
        fname = Path(urlsplit(rs.url).path).name or "download"
        archive = cache / f"{name}-{hashlib.sha256(rs.url.encode()).hexdigest()[:8]}-{fname}"
        if archive.exists():
            _log(f"{name}: using the earlier download {archive}")
            sha, size = sha256_file(archive), archive.stat().st_size
            if rs.sha256 and sha != rs.sha256:
                os.replace(archive, archive.with_name(archive.name + ".corrupt"))
                _log(f"  its sha256 {sha} is not the pinned {rs.sha256}: set aside as .corrupt, downloading again")
        if not archive.exists():
            _log(f"{name}: downloading {rs.url} -> {archive}")
            res = download(rs.url, archive, expected_sha256=rs.sha256, timeout_s=cfg.download.timeout_s,
                           retries=cfg.download.retries)
            sha, size = res.sha256, res.bytes
        if rs.sha256 is None:
            _no_checksum_note(name, rs.url, sha)
        where, url = archive, rs.url
    else:  # local
        path = rs.path.resolve()          # made absolute against base_dir by _resolve
        raw = stage.dest.resolve()
        if path == raw or path.is_relative_to(raw) or raw.is_relative_to(path):
            raise DownloadError(f"data.datasets.{name}.path: {rs.path} overlaps the output folder {stage.dest}; "
                                "point it at a folder outside data/raw")
        url = path.as_uri()
        if path.is_dir():
            src = pick_root(path, rs.inner)
            sha, size = tree_digest(src, rs.follow_links, name)
            if rs.sha256 and sha != rs.sha256:
                raise DownloadError(f"data.datasets.{name}: the folder {path} has content digest {sha}, "
                                    f"not the pinned sha256 {rs.sha256}")
            if done := _up_to_date(rs, stage, rs.source.name, url, sha):
                return done
            how = _link_or_copy_tree(src, stage.work, rs.follow_links, name)
            _finish_layout(rs, stage.work)
            record = {"source": rs.source.name, "url": url, "sha256": sha, "bytes": size, "layout": layout}
            out = _commit(rs, stage, stage.work, record, how, _Origin(stage.work, str(src), folder=True))
            _log(f"{name}: {how} {path} -> {stage.dest}")
            return out
        sha, size = sha256_file(path), path.stat().st_size
        if rs.sha256 and sha != rs.sha256:
            raise DownloadError(f"data.datasets.{name}: checksum mismatch for {path}: expected sha256 "
                                f"{rs.sha256}, got {sha}; the file is not used")
        if done := _up_to_date(rs, stage, rs.source.name, url, sha):
            return done
        where = path
    _log(f"{name}: extracting {where}")
    extract(where, stage.work, max_bytes=cfg.download.max_extract_bytes,
            max_ratio=cfg.download.max_compression_ratio)
    root = pick_root(stage.work, rs.inner)
    _finish_layout(rs, root)
    record = {"source": rs.source.name, "url": url, "sha256": sha, "bytes": size, "layout": layout}
    return _commit(rs, stage, root, record, "extracted",
                   _Origin(stage.work, str(where), downloaded=rs.mode == "download"))


def _finish_layout(rs: ResolvedSource, root: Path) -> None:
    if rs.layout == "rafd":
        arrange_rafd(root)


def _resolve(name: str, spec: DatasetSpec, base: Path) -> ResolvedSource:
    if spec.path:
        spec = dataclasses.replace(spec, path=str(base / Path(spec.path).expanduser()))
    try:
        return resolve(name, spec)
    except SourceError as e:
        raise DownloadError(str(e)) from None


def fetch_dataset(name: str, spec: DatasetSpec, cfg: Config, base_dir: str | Path | None = None) -> dict:
    """Fetch one ``data.datasets`` entry into ``<data.root>/raw/<name>``; returns its SOURCE.json
    record plus ``root``, ``status`` (generated / extracted / hard-linked / copied / up to date) and
    ``index``, the parsed :class:`DatasetIndex` of the result (its ``skipped``: listed images left
    out under ``missing: skip``).
    Relative ``data.root``, ``download.cache_dir`` and dataset paths start at ``base_dir``
    (default: the current folder; the stage script passes the folder of params.yaml)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    rs = _resolve(name, spec, base)
    stage = _Stage(base / cfg.data.root / "raw", name)
    try:
        out = _fetch(rs, cfg, stage, base)
    except DownloadError as e:
        stage.abort()
        msg = str(e)
        raise DownloadError(msg if msg.startswith("data.datasets.") else f"data.datasets.{name}: {msg}") from None
    except ArchiveError as e:
        stage.abort()
        raise DownloadError(f"data.datasets.{name}: {e}") from None
    except BaseException:
        stage.abort()
        raise
    return {"root": str(stage.dest), **out}


def fetch_all(cfg: Config, base_dir: str | Path | None = None,
              log: Callable[[str], None] = _log) -> dict[str, dict]:
    """Every dataset of ``data.datasets`` -> ``{name: {"root", "status", "index", "source", "url",
    "sha256", "bytes", "layout"[, "missing"]}}``. Raises :class:`DownloadError` naming the dataset
    key on failure."""
    if not cfg.data.datasets:
        raise DownloadError("data.datasets: empty; name at least one dataset (see params.yaml)")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for name, spec in cfg.data.datasets.items():     # every entry's mistakes before any long download
        _resolve(name, spec, base)
    results = {}
    for name, spec in cfg.data.datasets.items():
        results[name] = fetch_dataset(name, spec, cfg, base_dir)
        log(f"{name}: {results[name]['status']} -> {results[name]['root']}")
    return results
