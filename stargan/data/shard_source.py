"""Where a dataset's shards are read from: the local ``data/shards/<name>`` folder, or the copy the
shard stage published to ``shard.uri`` (stargan/data/remote_shards.py).

Every reader (the training streams, the sample grids, the driver's check before Ray starts, the
run name) goes through these few functions, so "local or object store" is decided in one place:
a ``str`` with ``://`` is a URI, anything else a folder.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stargan.config import Config
from stargan.data.remote_shards import remote_shards
from stargan.data.shards import REPAIR, ShardError, open_shard, read_manifest, verify_shards
from stargan.storage import is_uri, join


def shard_root(cfg: Config, repo_root: Path) -> str | Path:
    """``shard.uri`` when the shards are published, else ``<repo>/<data.root>/shards``."""
    if cfg.shard.uri:
        return cfg.shard.uri
    return (Path(repo_root) / cfg.data.root / "shards").resolve()


def shard_location(cfg: Config, repo_root: Path, name: str) -> str | Path:
    """One dataset's shard set: ``<shard.uri>/<name>`` or ``<repo>/<data.root>/shards/<name>``."""
    return join(shard_root(cfg, repo_root), name)


def verify(shard_dir: str | Path) -> dict:
    """The manifest, checked: every file's sha256 (local), or every object present at its published
    size (remote; there the footer and each row group are checked by sha256 as they are read)."""
    if is_uri(shard_dir):
        return remote_shards(str(shard_dir)).manifest()
    return verify_shards(Path(shard_dir))


def manifest_bytes(shard_dir: str | Path) -> bytes:
    """The manifest as stored (the run name hashes it)."""
    if is_uri(shard_dir):
        rs = remote_shards(str(shard_dir))
        rs.manifest()
        with rs.store.open_input_file("manifest.json") as f:
            return f.read()
    path = Path(shard_dir) / "manifest.json"
    if not path.exists():
        raise ShardError(f"{path}: missing; build the shards first (`dvc repro shard`)")
    read_manifest(Path(shard_dir))
    return path.read_bytes()


def file_metadata(shard_dir: str | Path, entry: dict) -> pq.FileMetaData:
    """The parquet footer of one manifest file entry (row counts checked against the manifest)."""
    if is_uri(shard_dir):
        return remote_shards(str(shard_dir)).metadata(entry["path"])
    return open_shard(Path(shard_dir), entry).metadata


def describe(shard_dir: str | Path, rel: str) -> str:
    """A file of the set, for messages and :class:`~stargan.data.loader.Unit` paths."""
    return str(join(shard_dir, rel))


class RowGroupReader:
    """Reads ``(file, row group)`` of one shard set; per process (opened lazily, so forked workers
    own theirs). Remote sets read ahead what :meth:`prefetch` is given; local files need not (the
    page cache does it)."""

    def __init__(self, shard_dir: str | Path):
        self.shard_dir = shard_dir
        self.remote = remote_shards(str(shard_dir)) if is_uri(shard_dir) else None
        self._files: dict[str, pq.ParquetFile] = {}

    def prefetch(self, units: list[tuple[str, int]]) -> None:
        if self.remote is not None and units:
            self.remote.prefetch(units)

    def read(self, rel: str, row_group: int, columns: list[str]) -> pa.Table:
        if self.remote is not None:
            return self.remote.read_row_group(rel, row_group, columns)
        path = str(Path(self.shard_dir) / rel)
        pf = self._files.get(path)
        if pf is None:
            pf = self._files[path] = pq.ParquetFile(path)
        try:
            return pf.read_row_group(row_group, columns=columns, use_threads=False)
        except Exception as e:  # noqa: BLE001 - a damaged page
            raise ShardError(f"{path}: row group {row_group} unreadable ({e}); {REPAIR}") from None
