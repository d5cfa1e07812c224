"""Small file helpers every stage shares: atomic writes of files and folders, file checksums.

Atomic: the bytes (or a whole folder) go to a temporary name beside the destination, which is then
renamed over the destination, so a reader (the next DVC stage, a resumed run) never sees half a
file, and a crash or a full disk mid-write leaves the previous file or folder as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomic write (mode 0644: readable like any file the user writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON write, sorted keys for stable diffs."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def replace_dir(new: Path, dest: Path) -> None:
    """Put the finished folder ``new`` at ``dest`` (same filesystem), replacing what was there.

    The old folder is renamed aside first, put back if renaming ``new`` fails, and removed only
    once ``new`` is in place: a reader sees the old folder or the new one, never a mix, and a
    failure never leaves ``dest`` missing."""
    new, dest = Path(new), Path(dest)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    had = dest.exists() or dest.is_symlink()
    if had:
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except OSError:
        if had:
            os.replace(old, dest)
        raise
    if had:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """An empty folder beside ``dest`` to build the new content in. It replaces ``dest``
    (:func:`replace_dir`) when the block ends without error, and is removed when the block
    raises: a crash, a full disk or a bad input never leaves ``dest`` half-written or emptied.
    Folders left beside ``dest`` by killed runs (their process is gone) are removed first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    try:
        yield tmp
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(dest: Path) -> None:
    """``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` folders beside ``dest`` whose process is gone."""
    for p in Path(dest).parent.glob(f".{Path(dest).name}.*-*"):
        kind, _, pid = p.name[len(Path(dest).name) + 2:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and p.is_dir() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
