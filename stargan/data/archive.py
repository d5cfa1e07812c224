"""Safe extraction of the archives datasets ship in (zip, tar, tar.gz/bz2/xz).

Every member is checked *before* anything is written: a member whose name is absolute, carries a
drive letter or walks up with ``..``, a link that points outside the target folder, and device
files or FIFOs are refused with :class:`UnsafeArchiveError` naming the member. Tar extraction
then also runs under Python's ``filter="data"`` as a second line of defence; zip members are
written by hand (zipfile has no such filter) after the same checks.

Size: the members' declared sizes are added up first, and an archive that would write more than
``max_bytes`` (``download.max_extract_bytes``), unpack to more than ``max_ratio`` times its own
size (``download.max_compression_ratio``; a decompression bomb) or overfill the destination's
filesystem is refused before a byte is written. Zip members are counted as they are written, so
a member that inflates past its declared size (sizes in headers can lie) is refused too. A failed
extraction leaves the destination empty.
"""
from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from stargan.errors import StarganError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_BYTES = 200 * 2**30         # download.max_extract_bytes
MAX_RATIO = 100.0               # download.max_compression_ratio
RATIO_FLOOR = 1 << 20           # an archive unpacking to less than this cannot hurt: no ratio check
_DRIVE = re.compile(r"^[A-Za-z]:")
CHUNK = 1 << 20


class ArchiveError(StarganError, ValueError):
    """An archive that cannot be read (truncated, encrypted, unknown format)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member that would write outside the target folder or create a special file."""


def archive_kind(path: Path) -> str | None:
    """``"zip"`` or ``"tar"`` from the file's magic bytes (any compression), else None."""
    path = Path(path)
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        pass
    return None


def _parts(name: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]


def check_member_name(archive: Path, name: str) -> str:
    """Refuse absolute paths, drive letters and ``..``; return the normalised relative name."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract "
                                 "an archive that writes outside its folder")
    parts = _parts(name)
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} walks out of the target folder with '..'; "
                                 "refusing to extract")
    return "/".join(parts)


def _check_link(archive: Path, member: str, target: str, *, relative_to_member: bool) -> None:
    """A link target must stay inside the extraction root (symlinks resolve from their folder)."""
    if not target or target.startswith(("/", "\\")) or _DRIVE.match(target):
        raise UnsafeArchiveError(f"{archive}: member {member!r} is a link to the absolute path "
                                 f"{target!r}; refusing to extract")
    base = posixpath.dirname(member) if relative_to_member else ""
    joined = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if joined == ".." or joined.startswith("../") or posixpath.isabs(joined):
        raise UnsafeArchiveError(f"{archive}: member {member!r} is a link to {target!r}, outside the "
                                 "target folder; refusing to extract")


def _size(n: float) -> str:
    """52428800 -> '50.0 MiB'."""
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_size(archive: Path, dest: Path, total: int, max_bytes: int, max_ratio: float) -> None:
    """Refuse to write ``total`` bytes (the members' declared sizes) over a limit, before writing."""
    packed = archive.stat().st_size
    what = f"{archive}: would write {_size(total)} when extracted"
    if total > max_bytes:
        raise ArchiveError(f"{what}, over the limit of {_size(max_bytes)}; if the archive is genuine, "
                           "raise download.max_extract_bytes")
    if total > RATIO_FLOOR and total > max_ratio * max(packed, 1):
        raise ArchiveError(f"{what} from {_size(packed)}, {total / max(packed, 1):.0f} times its size, over the "
                           f"limit of {max_ratio:g} (a decompression bomb?); if the archive is genuine, raise "
                           "download.max_compression_ratio")
    free = shutil.disk_usage(dest).free
    if total > free:
        raise ArchiveError(f"{what} into {dest}, whose filesystem has {_size(free)} free; free some space "
                           "or point data.root at a bigger disk")


# ------------------------------------------------------------------------------------- zip

def _zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str, int]]:
    plan = []
    for info in zf.infolist():
        rel = check_member_name(archive, info.filename)
        mode = _zip_mode(info)
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device file or FIFO; "
                                     "refusing to extract")
        if kind == stat.S_IFLNK:
            _check_link(archive, rel, zf.read(info).decode("utf-8", "replace"), relative_to_member=True)
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{archive}: member {info.filename!r} is encrypted; unpack it by hand "
                               "and point the dataset at the folder (source: local)")
        plan.append((info, rel, kind))
    return plan


def _copy_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path) -> None:
    """Write one member, counting bytes: more than its declared size is refused, not written."""
    written = 0
    with zf.open(info) as src, open(out, "wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} unpacks to more than the "
                                         f"{info.file_size} bytes it declares; refusing to extract")
            dst.write(chunk)


def _extract_zip(archive: Path, dest: Path, max_bytes: int, max_ratio: float) -> int:
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        plan = _check_zip(archive, zf)
        check_size(archive, dest, sum(info.file_size for info, _, _ in plan), max_bytes, max_ratio)
        for info, rel, kind in plan:
            if not rel:
                continue
            out = root / rel
            if not out.resolve().is_relative_to(root):   # through a symlink made earlier
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} resolves outside the "
                                         "target folder (through a link); refusing to extract")
            if info.is_dir() or kind == stat.S_IFDIR:
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            if kind == stat.S_IFLNK:
                os.symlink(zf.read(info).decode("utf-8"), out)
                continue
            _copy_member(archive, zf, info, out)
    return len(plan)


# ------------------------------------------------------------------------------------- tar

def _check_tar(archive: Path, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        rel = check_member_name(archive, m.name)
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device file or FIFO; "
                                     "refusing to extract")
        if m.issym():
            _check_link(archive, rel, m.linkname, relative_to_member=True)
        elif m.islnk():
            _check_link(archive, rel, m.linkname, relative_to_member=False)
    return members


def _extract_tar(archive: Path, dest: Path, max_bytes: int, max_ratio: float) -> int:
    with tarfile.open(archive) as tf:
        members = _check_tar(archive, tf)
        check_size(archive, dest, sum(m.size for m in members if m.isreg()), max_bytes, max_ratio)
        try:
            tf.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as e:
            raise UnsafeArchiveError(f"{archive}: member {e.tarinfo.name!r} refused: {e}") from None
    return len(members)


def extract(archive: Path, dest: Path, *, max_bytes: int = MAX_BYTES, max_ratio: float = MAX_RATIO) -> int:
    """Extract ``archive`` into ``dest`` (created; must be empty) after checking every member.

    Returns the number of members. Raises :class:`UnsafeArchiveError` naming the first unsafe
    member, and :class:`ArchiveError` for unreadable archives and archives over the size limits
    (see the module doc); ``dest`` is left empty then.
    """
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    if kind is None:
        raise ArchiveError(f"{archive}: not a zip or tar archive (truncated download, or an HTML page "
                           f"saved under an archive name?); supported: {', '.join(ARCHIVE_SUFFIXES)}")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ArchiveError(f"{dest}: extraction target is not empty")
    try:
        return (_extract_zip if kind == "zip" else _extract_tar)(archive, dest, max_bytes, max_ratio)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, RuntimeError, UnicodeDecodeError) as e:
        _empty(dest)
        raise ArchiveError(f"{archive}: cannot read the {kind} archive ({e}); it may be truncated or "
                           "corrupt: delete it and download again") from None
    except BaseException:          # refused (ArchiveError) or interrupted: nothing half-written stays
        _empty(dest)
        raise


def _empty(dest: Path) -> None:
    """Remove what a failed extraction wrote (``dest`` was empty before)."""
    for p in dest.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
