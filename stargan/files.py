"""Small file helpers every stage shares: atomic writes and file checksums.

Atomic: the bytes go to a temporary file in the destination folder, which is then renamed over
the destination, so a reader (the next DVC stage, a resumed run) never sees half a file, and a
crash or a full disk mid-write leaves the previous file as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    """Atomic text write (mode 0644: readable like any file the user writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON write, sorted keys for stable diffs."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
