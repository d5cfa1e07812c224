"""Stage 3: aligned images + labels -> parquet shards + ``manifest.json`` (see docs/contracts.md).

``data/shards/<name>/<split>-NNNNN.parquet``: rows sorted by key within a split, at most
``shard.rows_per_shard`` rows per file, ``shard.rows_per_group`` rows per row group, columns
:data:`SCHEMA`. Same inputs -> the same bytes: no timestamps, fixed writer options (image bytes
stored uncompressed, since PNG/JPEG are compressed already; the small columns zstd), manifest
JSON with sorted keys. The folder is written next to its final place and renamed over it, so
a crash never leaves a half-written shard set behind.

Records without an official split (``split == ""``: RaFD, user folders) get one from a stable
hash of their identity (of their key when the identity is unknown, -1), so one person never
lands in two splits and adding images never moves the ones already assigned.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stargan.config import ShardConfig
from stargan.data.imageio import decode_image, encode_image
from stargan.errors import StarganError
from stargan.files import sha256_file, staged_dir

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
SCHEMA = pa.schema([
    ("key", pa.string()),
    ("image", pa.binary()),
    ("labels", pa.list_(pa.int8())),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("identity", pa.int32()),
    ("matrix", pa.list_(pa.float32())),
    ("extra", pa.string()),
])
# Fixed writer options: part of "same inputs -> same bytes".
_WRITER_OPTIONS = dict(
    compression={"key": "zstd", "image": "none", "labels": "zstd", "dataset": "zstd", "split": "zstd",
                 "identity": "zstd", "matrix": "zstd", "extra": "zstd"},
    use_dictionary=["dataset", "split"],
    write_statistics=["key", "identity"],
    write_page_index=False,
    version="2.6",
)
REPAIR = "re-run `dvc repro shard` (or `python pipelines/shard.py`) to rebuild the shards"


class ShardError(StarganError, RuntimeError):
    """Missing, corrupt or inconsistent shards (or aligned inputs), or shards that cannot serve a
    request (too few row groups for the ranks, a v2 domain without images); the message names
    the file or the setting and the fix."""


# ------------------------------------------------------------------------- aligned input

@dataclass(frozen=True)
class AlignedRecord:
    key: str
    path: Path
    labels: tuple[int, ...]
    split: str
    identity: int
    matrix: tuple[float, ...]      # 6 values, row-major 2x3
    extra: str                     # JSON, "" when empty


def _fail_aligned(where: Path, what: str) -> ShardError:
    return ShardError(f"{where}: {what}. Re-run `dvc repro align` to rebuild the aligned set")


def read_aligned(aligned_dir: Path) -> tuple[dict, list[AlignedRecord]]:
    """``meta.json`` + ``index.jsonl`` of an aligned folder, validated row by row."""
    aligned_dir = Path(aligned_dir)
    meta_path, index_path = aligned_dir / "meta.json", aligned_dir / "index.jsonl"
    for p in (meta_path, index_path):
        if not p.exists():
            raise _fail_aligned(p, "missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise _fail_aligned(meta_path, f"not valid JSON ({e})") from None
    for k in ("label_names", "label_kind", "image_size"):
        if k not in meta:
            raise _fail_aligned(meta_path, f"no '{k}' field")
    n_labels = len(meta["label_names"])
    records: list[AlignedRecord] = []
    seen: set[str] = set()
    for i, line in enumerate(index_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{index_path}:{i}"
        try:
            row = json.loads(line)
            key = str(row["key"])
            labels = tuple(int(v) for v in row["labels"])
            matrix = tuple(float(v) for r in row["matrix"] for v in r)
            split = str(row.get("split", ""))
            identity = int(row.get("identity", -1))
            file = str(row["file"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{where}: malformed index row ({type(e).__name__}: {e}). "
                             "Re-run `dvc repro align`") from None
        if len(labels) != n_labels or any(v not in (0, 1) for v in labels):
            raise ShardError(f"{where}: key {key!r} has labels {list(labels)}; expected {n_labels} "
                             f"values of 0/1 for {meta['label_names']}. Re-run `dvc repro align`")
        if len(matrix) != 6:
            raise ShardError(f"{where}: key {key!r} has a matrix of {len(matrix)} values; expected 2x3")
        if split not in SPLITS + ("",):
            raise ShardError(f"{where}: key {key!r} has split {split!r}; expected train, val, test or ''")
        if key in seen:
            raise ShardError(f"{where}: duplicate key {key!r}. Re-run `dvc repro align`")
        seen.add(key)
        path = aligned_dir / file
        if not path.exists() and (aligned_dir / "images" / file).exists():
            path = aligned_dir / "images" / file
        extra = row.get("extra") or {}
        records.append(AlignedRecord(key, path, labels, split, identity, matrix,
                                     json.dumps(extra, sort_keys=True, separators=(",", ":")) if extra else ""))
    if not records:
        raise _fail_aligned(index_path, "no rows (no image was accepted by the align stage?)")
    return meta, records


# --------------------------------------------------------------------------- split rule

def split_fraction_point(key: str, identity: int) -> float:
    """A stable point in [0, 1) per identity (per key when the identity is unknown)."""
    token = f"id:{identity}" if identity >= 0 else f"key:{key}"
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big") / 2.0 ** 64


def assign_split(key: str, identity: int, test_fraction: float, val_fraction: float) -> str:
    u = split_fraction_point(key, identity)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


# ------------------------------------------------------------------------------ writing

def _png_rgb8_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an intact 8-bit RGB PNG from its IHDR chunk; None for anything else."""
    if len(data) < 26 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    if data[24] != 8 or data[25] != 2:            # bit depth 8, colour type 2 (RGB)
        return None
    return struct.unpack(">II", data[16:24]) if _png_chunks_intact(data) else None


def _png_chunks_intact(data: bytes) -> bool:
    """Every chunk complete with a matching CRC, up to IEND: a truncated or bit-flipped PNG is not
    passed through unchecked (it goes to the decoder, which names the problem). ~1 GB/s."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 12 + length
        if end > len(data):
            return False
        if zlib.crc32(data[pos + 4:end - 4]) & 0xFFFFFFFF != struct.unpack(">I", data[end - 4:end])[0]:
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos = end
    return False


def _image_bytes(rec: AlignedRecord, fmt: str, quality: int, size: int) -> bytes:
    """An 8-bit RGB PNG passes through unchanged when the target is PNG; the rest is decoded
    (checking the size) and encoded with ``stargan.data.imageio``."""
    try:
        data = rec.path.read_bytes()
    except FileNotFoundError:
        raise ShardError(f"key {rec.key!r}: image {rec.path} listed in index.jsonl is missing. "
                         "Re-run `dvc repro align`") from None
    png_size = _png_rgb8_size(data) if fmt == "png" else None
    if png_size == (size, size):
        return data
    try:
        rgb = decode_image(data, name=str(rec.path))
    except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt input file
        raise ShardError(f"key {rec.key!r}: {rec.path} cannot be decoded ({e}). Re-run `dvc repro align`") from None
    if rgb.shape[:2] != (size, size):
        raise ShardError(f"key {rec.key!r}: {rec.path} is {rgb.shape[1]}x{rgb.shape[0]}, expected {size}x{size} "
                         "(meta.json image_size). Re-run `dvc repro align`")
    return encode_image(rgb, fmt, quality)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _write_file(path: Path, recs: list[AlignedRecord], split: str, name: str, cfg: ShardConfig,
                size: int, pool: ThreadPoolExecutor) -> int:
    groups = 0
    with pq.ParquetWriter(path, SCHEMA, **_WRITER_OPTIONS) as writer:
        for group in _chunks(recs, cfg.rows_per_group):
            images = list(pool.map(lambda r: _image_bytes(r, cfg.image_format, cfg.jpeg_quality, size), group))
            table = pa.table({
                "key": [r.key for r in group],
                "image": images,
                "labels": [list(r.labels) for r in group],
                "dataset": [name] * len(group),
                "split": [split] * len(group),
                "identity": [r.identity for r in group],
                "matrix": [list(r.matrix) for r in group],
                "extra": [r.extra for r in group],
            }, schema=SCHEMA)
            writer.write_table(table, row_group_size=len(group))
            groups += 1
    return groups


def write_shards(aligned_dir: Path, out_dir: Path, cfg: ShardConfig, name: str | None = None,
                 threads: int | None = None) -> dict:
    """Shard one aligned dataset folder into ``out_dir``; returns the manifest (also written).

    ``out_dir`` is replaced atomically: everything is written to a sibling temp folder first.
    """
    aligned_dir, out_dir = Path(aligned_dir), Path(out_dir)
    meta, records = read_aligned(aligned_dir)
    name = name or meta.get("name") or aligned_dir.name
    size = int(meta["image_size"])
    by_split: dict[str, list[AlignedRecord]] = {s: [] for s in SPLITS}
    assigned = 0
    for r in records:
        split = r.split
        if not split:
            split = assign_split(r.key, r.identity, cfg.test_fraction, cfg.val_fraction)
            assigned += 1
        by_split[split].append(r)

    files: list[dict] = []
    counts: dict[str, dict] = {}
    try:
        with staged_dir(out_dir) as tmp, \
                ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1)) as pool:
            for split in SPLITS:
                recs = sorted(by_split[split], key=lambda r: r.key)
                if not recs:
                    continue
                labels = np.asarray([r.labels for r in recs], dtype=np.int64)
                counts[split] = {"total": len(recs),
                                 "per_label": {n: int(labels[:, j].sum()) for j, n in enumerate(meta["label_names"])}}
                for i, chunk in enumerate(_chunks(recs, cfg.rows_per_shard)):
                    rel = f"{split}-{i:05d}.parquet"
                    groups = _write_file(tmp / rel, chunk, split, name, cfg, size, pool)
                    files.append({"path": rel, "split": split, "rows": len(chunk), "row_groups": groups,
                                  "sha256": sha256_file(tmp / rel)})
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "name": name,
                "layout": meta.get("layout", ""),
                "label_names": list(meta["label_names"]),
                "label_kind": meta["label_kind"],
                "image_size": size,
                "image_format": cfg.image_format,
                "jpeg_quality": cfg.jpeg_quality if cfg.image_format == "jpeg" else None,
                "rows_per_group": cfg.rows_per_group,
                "rows_per_shard": cfg.rows_per_shard,
                "split_rule": {"assigned": assigned, "test_fraction": cfg.test_fraction,
                               "val_fraction": cfg.val_fraction, "by": "sha256 of identity (key if identity is -1)"},
                "files": files,
                "counts": counts,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as e:     # disk full, unwritable folder, quota: the previous shards stay as they were
        kept = "the previous shards there are intact" if (out_dir / "manifest.json").exists() else "nothing was written"
        raise ShardError(f"cannot write shards to {out_dir}: {e.strerror or e} [errno {e.errno}]"
                         f"{' (' + e.filename + ')' if e.filename else ''}; {kept}. Free space or make "
                         f"{out_dir.parent} writable, then {REPAIR}") from e
    return manifest


# ------------------------------------------------------------------------------ reading

def read_manifest(shard_dir: Path) -> dict:
    """``manifest.json`` of a shard folder; :class:`ShardError` when missing or unreadable."""
    path = Path(shard_dir) / "manifest.json"
    if not path.exists():
        raise ShardError(f"{path}: missing; {REPAIR}")
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, path: str) -> dict:
    """A manifest's bytes, validated (``path`` names it in messages: a file or a URI)."""
    try:
        manifest = json.loads(data.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e}); {REPAIR}") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{path}: schema_version {manifest.get('schema_version')!r}, this code reads "
                         f"{SCHEMA_VERSION}; {REPAIR}")
    for k in ("files", "counts", "label_names", "label_kind", "image_size"):
        if k not in manifest:
            raise ShardError(f"{path}: no '{k}' field; {REPAIR}")
    return manifest


def open_shard(shard_dir: Path, entry: dict) -> pq.ParquetFile:
    """Open one manifest file entry, checking its row counts against the manifest (cheap: footer)."""
    path = Path(shard_dir) / entry["path"]
    if not path.exists():
        raise ShardError(f"{path}: missing (listed in manifest.json); {REPAIR}")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad footer
        raise ShardError(f"{path}: unreadable parquet ({e}); {REPAIR}") from None
    md = pf.metadata
    if md.num_rows != entry["rows"] or md.num_row_groups != entry["row_groups"]:
        raise ShardError(f"{path}: {md.num_rows} rows in {md.num_row_groups} row groups, manifest says "
                         f"{entry['rows']} in {entry['row_groups']}; {REPAIR}")
    if not pf.schema_arrow.equals(SCHEMA):
        raise ShardError(f"{path}: unexpected columns {pf.schema_arrow.names}; {REPAIR}")
    return pf


#: Shard files whose sha256 this process has checked: (path, size, mtime, inode) -> sha256.
_VERIFIED: dict[tuple, str] = {}


def verify_shards(shard_dir: Path) -> dict:
    """The manifest, after checking that every file it lists is there with its sha256.

    Every reader calls this before reading (the train/tune/classifier/evaluate stages, the
    training workers, ``stargan bench data``), so a flipped or truncated byte is refused in one
    line naming the file instead of training on a damaged image or failing steps later. A file
    is hashed once per process (keyed by path, size, mtime and inode, so a rewrite is hashed
    again); measured cost in the README.
    """
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    for entry in manifest["files"]:
        path = shard_dir / entry["path"]
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ShardError(f"{path}: missing (listed in manifest.json); {REPAIR}") from None
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if _VERIFIED.get(key) == entry["sha256"]:
            continue
        if sha256_file(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from manifest.json (the file was damaged or changed "
                             f"after the shard stage wrote it); {REPAIR}")
        _VERIFIED[key] = entry["sha256"]
    return manifest


def split_entries(manifest: dict, split: str) -> list[dict]:
    """The manifest's file entries of one split, in file order."""
    return [f for f in manifest["files"] if f["split"] == split]


def describe(manifest: dict) -> str:
    """One line of counts per split, for logs and the stage script."""
    parts = [f"{s}={c['total']}" for s, c in sorted(manifest["counts"].items())]
    return f"{manifest['name']}: {len(manifest['files'])} file(s), " + ", ".join(parts)
