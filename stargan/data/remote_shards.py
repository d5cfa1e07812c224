"""Shards on an object store (``shard.uri``: ``s3://``, ``gs://``, ``file://``, any pyarrow.fs URI).

Why a module of its own: a training worker on another node has no ``data/shards`` folder, and
reading a whole shard file to check its sha256 (what :func:`stargan.data.shards.verify_shards`
does locally) would make every rank download every file. So the published manifest carries a
sha256 per *row group byte range* and one of the footer, and a rank fetches, checks and decodes
only its own row groups, one ranged GET each:

- :func:`publish_shards` (the shard stage, after writing ``data/shards/<name>``, which stays the
  DVC-tracked copy): uploads every parquet file, then ``manifest.json`` (the local manifest plus a
  ``remote`` block per file: size, footer sha256, ``[offset, length, sha256]`` per row group), then
  removes objects of an older shard set under that prefix. The manifest goes last, so a reader
  never finds a manifest whose files are not there yet.
- :class:`RemoteShards` (the readers, through stargan/data/shard_source.py): the manifest, each
  file's footer (fetched once per process, checked against its sha256, parsed), and row groups:
  the byte range fetched, its sha256 checked, then decoded from those bytes alone.
- Transient errors (a reset connection, a 5xx the SDK gave up on, a range that came back damaged)
  are retried with exponential backoff (:data:`RETRIES` tries) before a one-line
  :class:`~stargan.data.shards.ShardError` naming the object.
- :meth:`RemoteShards.prefetch` starts fetching row groups in background threads (read-ahead):
  the training stream asks for the next window while the current one is decoded and trained on,
  so the accelerator does not wait for the network.

Credentials come only from the environment (see stargan/storage.py); a URI carrying one is refused.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stargan.data.shards import REPAIR, ShardError, parse_manifest, verify_shards
from stargan.storage import RunStorage, join, open_storage

T = TypeVar("T")

RETRIES = 5                 # tries per object read or upload (pyarrow's S3 client retries inside each)
BACKOFF_S = 0.2             # first wait; doubles each try (0.2, 0.4, 0.8, 1.6 s)
PREFETCH_THREADS = 2
PREFETCH_MAX = 8            # row groups held ahead per reader (bytes: rows_per_group x image size)


def row_group_ranges(md: pq.FileMetaData) -> list[tuple[int, int]]:
    """``(offset, end)`` of each row group's column chunks in the file (from the footer)."""
    out = []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        starts, ends = [], []
        for c in range(rg.num_columns):
            col = rg.column(c)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            starts.append(start)
            ends.append(start + col.total_compressed_size)
        out.append((min(starts), max(ends)))
    return out


def integrity(path: Path) -> dict:
    """What a remote reader checks, computed from the local file: size, footer sha256 and one
    ``[offset, length, sha256]`` per row group."""
    data = Path(path).read_bytes()
    ranges = row_group_ranges(pq.ParquetFile(pa.BufferReader(data)).metadata)
    footer = ranges[-1][1] if ranges else 4
    return {"size": len(data), "footer_offset": footer,
            "footer_sha256": hashlib.sha256(data[footer:]).hexdigest(),
            "row_groups": [[a, b - a, hashlib.sha256(data[a:b]).hexdigest()] for a, b in ranges]}


def _retry(what: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried on OSError (pyarrow's network and service errors) with backoff."""
    tries = RETRIES
    for attempt in range(tries):
        try:
            return fn()
        except OSError as e:
            if attempt == tries - 1:
                raise ShardError(f"{what}: failed {tries} times, last: {' '.join(str(e).split())}. Check the "
                                 "endpoint (AWS_ENDPOINT_URL), the credentials in the environment and the "
                                 "network; the object store may be down") from None
            time.sleep(BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- publishing

def publish_shards(local_dir: Path, uri: str, repo_root: Path) -> dict:
    """Upload the verified local shard set ``local_dir`` to ``uri`` (the dataset's folder there);
    returns the published manifest."""
    manifest = verify_shards(local_dir)
    store = open_storage(uri, repo_root, what="shard.uri")
    files = []
    for entry in manifest["files"]:
        local = Path(local_dir) / entry["path"]
        _retry(f"upload {store.describe(entry['path'])}", lambda: store.upload(local, entry["path"]))
        files.append(entry | {"remote": integrity(local)})
    published = manifest | {"files": files}
    text = json.dumps(published, indent=2, sort_keys=True) + "\n"
    _retry(f"upload {store.describe('manifest.json')}", lambda: store.write_text("manifest.json", text))
    keep = {e["path"] for e in files} | {"manifest.json"}
    for stale in store.list_files():
        if stale not in keep:            # an older shard set's files (fewer shards now, renamed split)
            store.delete(stale)
    return published


# ------------------------------------------------------------------------------ reading

class _Ranges(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only some ranges are known: enough for pyarrow
    to decode one row group given the file's metadata. A read outside them is a bug, not a fetch."""

    def __init__(self, size: int, parts: dict[int, bytes]):
        super().__init__()
        self.size, self.parts, self.pos = size, parts, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        for start, data in self.parts.items():
            if start <= self.pos and self.pos + n <= start + len(data):
                buf[:n] = data[self.pos - start:self.pos - start + n]
                self.pos += n
                return n
        raise OSError(f"read of bytes {self.pos}..{self.pos + n} outside the fetched ranges")


class RemoteShards:
    """One published shard set (``<shard.uri>/<name>``): manifest, verified footers and row groups.

    Cheap to create; the filesystem is opened per process (a forked DataLoader worker opens its
    own: an S3 client must not cross a fork) and the prefetch threads on first use."""

    def __init__(self, uri: str):
        self.uri = uri
        self._store: RunStorage | None = None
        self._pid = -1
        self._manifest: dict | None = None
        self._footers: dict[str, pq.FileMetaData] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: OrderedDict[tuple[str, int], Future] = OrderedDict()
        self._lock = threading.Lock()
        self._handles: dict[str, object] = {}
        self._handles_pid = -1
        self.stats = {"fetched": 0, "prefetched": 0, "retried": 0}
        self.fetched_units: set[tuple[str, int]] = set()       # what this process read (tests: only its own)

    # -- plumbing
    @property
    def store(self) -> RunStorage:
        if self._store is None or self._pid != os.getpid():
            self._store = open_storage(self.uri, Path.cwd(), what="shard.uri")
            self._pid, self._pool, self._ahead = os.getpid(), None, OrderedDict()
        return self._store

    def describe(self, rel: str = "") -> str:
        return str(join(self.uri, rel))

    def _read_all(self, rel: str) -> bytes:
        with self.store.open_input_file(rel) as f:
            return f.read()

    def _handle(self, rel: str):
        """An open random-access file per object and process (one HEAD each; ``read_at`` is
        thread-safe, each call one ranged GET)."""
        with self._lock:
            if self._handles_pid != os.getpid():
                self._handles, self._handles_pid = {}, os.getpid()
            f = self._handles.get(rel)
        if f is None:
            f = self.store.open_input_file(rel)
            with self._lock:
                self._handles[rel] = f
        return f

    def _read_range(self, rel: str, size: int, offset: int, length: int) -> bytes:
        def once() -> bytes:
            try:
                data = self._handle(rel).read_at(length, offset)
            except OSError:
                with self._lock:
                    self._handles.pop(rel, None)        # reopen on the next try
                raise
            if len(data) != length:
                raise OSError(f"short read: {len(data)} of {length} bytes (object is {size} in the manifest)")
            return data
        return _retry(f"{self.describe(rel)} bytes {offset}..{offset + length}", once)

    def _checked(self, rel: str, size: int, offset: int, length: int, sha: str, what: str) -> bytes:
        """The range, fetched again once if its sha256 differs (a damaged transfer); a second
        mismatch means the object itself differs from the manifest."""
        for attempt in range(2):
            data = self._read_range(rel, size, offset, length)
            if hashlib.sha256(data).hexdigest() == sha:
                return data
            self.stats["retried"] += 1
        raise ShardError(f"{self.describe(rel)}: sha256 of {what} differs from manifest.json (the object was "
                         f"damaged or replaced after it was published); {REPAIR} to publish it again")

    # -- manifest and footers
    def manifest(self) -> dict:
        """The published manifest, with each file's object present at its published size."""
        if self._manifest is None:
            where = self.describe("manifest.json")
            info = _retry(where, lambda: self.store.file_info("manifest.json"))
            if info.size is None:
                raise ShardError(f"{where}: missing; run the shard stage with shard.uri set to publish the shards")
            manifest = parse_manifest(_retry(where, lambda: self._read_all("manifest.json")), where)
            listed = {p: i for p, i in ((e["path"], e.get("remote")) for e in manifest["files"])}
            if not all(listed.values()):
                raise ShardError(f"{where}: no byte ranges per file (not written by publish_shards); {REPAIR}")
            infos = _retry(where, lambda: self.store.filesystem.get_file_info([self.store._path(p) for p in listed]))
            for (path, remote), info in zip(listed.items(), infos):
                found = info.size if info.type == pafs.FileType.File else None
                if found != remote["size"]:
                    raise ShardError(f"{self.describe(path)}: {'missing' if found is None else f'{found} bytes'} "
                                     f"(manifest.json lists {remote['size']} bytes); {REPAIR} to publish again")
            self._manifest = manifest
        return self._manifest

    def entry(self, rel: str) -> dict:
        return next(e for e in self.manifest()["files"] if e["path"] == rel)

    def metadata(self, rel: str) -> pq.FileMetaData:
        """The file's parquet footer, checked against its sha256 and its row counts against the
        manifest."""
        md = self._footers.get(rel)
        if md is None:
            entry = self.entry(rel)
            r = entry["remote"]
            footer = self._checked(rel, r["size"], r["footer_offset"], r["size"] - r["footer_offset"],
                                   r["footer_sha256"], "the footer")
            md = pq.ParquetFile(pa.BufferReader(b"PAR1" + footer)).metadata
            if md.num_rows != entry["rows"] or md.num_row_groups != entry["row_groups"]:
                raise ShardError(f"{self.describe(rel)}: {md.num_rows} rows in {md.num_row_groups} row groups, "
                                 f"manifest says {entry['rows']} in {entry['row_groups']}; {REPAIR}")
            self._footers[rel] = md
        return md

    # -- row groups
    def _fetch(self, rel: str, i: int) -> bytes:
        r = self.entry(rel)["remote"]
        offset, length, sha = r["row_groups"][i]
        data = self._checked(rel, r["size"], offset, length, sha, f"row group {i}")
        self.stats["fetched"] += 1
        self.fetched_units.add((rel, i))
        return data

    def prefetch(self, units: list[tuple[str, int]]) -> None:
        """Start fetching these ``(file, row group)`` in the background (read-ahead)."""
        _ = self.store                  # (re)opened in this process before its threads use it
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="shard-prefetch")
            for key in units:
                if key not in self._ahead:
                    while len(self._ahead) >= PREFETCH_MAX:       # the oldest guess was not read: drop it
                        self._ahead.popitem(last=False)[1].cancel()
                    self._ahead[key] = self._pool.submit(self._fetch, *key)

    def read_row_group(self, rel: str, i: int, columns: list[str]) -> pa.Table:
        """Row group ``i`` of file ``rel`` (verified), from the read-ahead when it was asked for."""
        md = self.metadata(rel)
        with self._lock:
            ahead = self._ahead.pop((rel, i), None) if self._pid == os.getpid() else None
        if ahead is not None:
            self.stats["prefetched"] += 1
            data = ahead.result()
        else:
            data = self._fetch(rel, i)
        offset = self.entry(rel)["remote"]["row_groups"][i][0]
        pf = pq.ParquetFile(_Ranges(self.entry(rel)["remote"]["size"], {offset: data}), metadata=md)
        try:
            return pf.read_row_group(i, columns=columns, use_threads=False)
        except Exception as e:  # noqa: BLE001 - bytes that match the sha256 but do not decode
            raise ShardError(f"{self.describe(rel)}: row group {i} unreadable ({e}); {REPAIR}") from None


_OPEN: dict[str, RemoteShards] = {}


def remote_shards(uri: str) -> RemoteShards:
    """The process's :class:`RemoteShards` for ``uri`` (one manifest read and footer per file)."""
    if uri not in _OPEN:
        _OPEN[uri] = RemoteShards(uri)
    return _OPEN[uri]

