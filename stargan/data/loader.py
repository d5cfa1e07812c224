"""Streaming readers over the parquet shards (see docs/contracts.md, "Reading").

Three readers:

:class:`TrainStream` (v1, and any label-conditioned training)
    Infinite stream of whole batches ``{"image" [B,3,H,W] in [-1,1], "label" [B,L], "key"}``
    (``uint8=True``, as :func:`train_stream` builds them for training: ``image`` stays uint8
    0..255 and :func:`stargan.data.transforms.to_model_input` converts it on the training device;
    a quarter of the bytes through worker shared memory and the host-to-device copy, which took
    v2's 256-px stream with one worker from 141 to 439 samples/s, benchmarks/README.md).
    Epoch ``e``: the split's (file, row group) *units* are permuted with ``rng(seed, e)`` (the
    same permutation on every rank) and dealt to ranks round-robin (``perm[rank::world_size]``).
    A rank's units are cut into windows of ``shuffle_units`` units, and the rows of each window
    are shuffled (the shuffle buffer). Concatenating the windows gives the rank's row sequence
    for the epoch. Ranks can receive different numbers of rows, so each rank's epoch is padded
    by wrapping around its own sequence up to the largest rank's row count: every rank yields
    the same number of rows, hence of batches, per epoch, and DDP ranks never drift apart (the
    padding repeats at most one row group's worth of rows, as ``DistributedSampler`` does).
    Epochs are concatenated and cut into batches of ``batch_size``, so batch ``b`` is a pure
    function of ``(seed, rank, world_size, batch_size, b)``, with row positions computed from
    parquet metadata alone.

    DataLoader workers split *batches*, not rows: worker ``w`` of ``W`` yields batches
    ``start_batch + w + i*W``, which is exactly the order in which ``DataLoader`` (in-order,
    round-robin over workers) hands them out. So the stream is the same for any ``num_workers``
    (a run can resume with a different worker count), no batch is produced twice, and
    ``start_batch=k`` reproduces batches ``k, k+1, ...`` of an uninterrupted run without reading
    or decoding anything before batch ``k``. The cost: each worker reads (but does not decode)
    the encoded bytes of the windows its batches touch, roughly ``W`` x the parquet I/O of one
    reader; decoding dominates (about 50x the read time for 64 px PNGs).

:class:`BalancedStream` (v2)
    Domain-balanced sampling like the official ``WeightedRandomSampler`` with ``1/class_count``
    weights: for each sample the source domain and the reference domain are drawn uniformly,
    then an image of it; the reference pair is two *different* images of the reference domain.
    Draws for batch ``b`` come from ``rng(seed, rank, b)``, so resume is immediate. The split's
    encoded images are held in memory (one Arrow buffer, shared copy-on-write with forked
    workers) and decoded per sample: memory is about the shards' size (5 KB per 64 px PNG:
    1 GB per 200k images; ``max_pool_bytes`` refuses more).

:func:`iter_split` (evaluation)
    Every row of one split once, in shard order, no augmentation, with identity, matrix and
    the parsed ``extra`` (render parameters of synthetic images) for counterfactual metrics.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from stargan.config import TrainConfig
from stargan.data.domains import DomainMap, resolve_domains
from stargan.data.imageio import ImageDecodeError, decode_shard_image
from stargan.data.shard_source import RowGroupReader, describe, file_metadata, verify
from stargan.data.shards import REPAIR, ShardError, split_entries
from stargan.data.transforms import build_transform
from stargan.storage import is_uri

log = logging.getLogger(__name__)
_MASK64 = (1 << 64) - 1
_STREAM_COLUMNS = ["key", "image", "labels"]


def _seed(*parts: int) -> list[int]:
    """Entropy for ``np.random.SeedSequence`` from possibly negative ints."""
    return [int(p) & _MASK64 for p in parts]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _shard_dir(shard_dir: str | Path) -> str | Path:
    """A URI stays a string (``Path`` would fold ``s3://`` to ``s3:/``); a folder becomes a Path."""
    return str(shard_dir) if is_uri(shard_dir) else Path(shard_dir)


def _decode_all(images: Sequence[bytes], keys: Sequence[str], shard_dir: str | Path) -> list[np.ndarray]:
    try:
        return [decode_shard_image(b, name=f"image {k!r}") for b, k in zip(images, keys)]
    except ImageDecodeError as e:
        raise ShardError(f"{shard_dir}: {e}; {REPAIR}") from None


# -------------------------------------------------------------------------------- units

@dataclass(frozen=True)
class Unit:
    """One (file, row group) of a split: the unit of reading and of sharding across ranks.
    ``file`` is the manifest's name of the file, ``path`` where it is (a path or a URI)."""
    path: str
    row_group: int
    rows: int
    file: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.file, self.row_group


def list_units(shard_dir: str | Path, split: str) -> tuple[dict, list[Unit]]:
    """The verified manifest and the split's units in file order (row counts from parquet footers).
    ``shard_dir``: a folder, or a URI the shards were published to (stargan/data/shard_source.py)."""
    manifest = verify(shard_dir)
    entries = split_entries(manifest, split)
    if not entries:
        raise ShardError(f"{shard_dir}: no '{split}' rows in manifest.json "
                         f"(splits present: {', '.join(sorted(manifest['counts'])) or 'none'})")
    units = []
    for entry in entries:
        md = file_metadata(shard_dir, entry)
        path = describe(shard_dir, entry["path"])
        units += [Unit(path, i, md.row_group(i).num_rows, entry["path"]) for i in range(md.num_row_groups)]
    return manifest, units


class _Reader:
    """Reads units of one shard set (local or remote; per process: forked workers own theirs)."""

    def __init__(self, shard_dir: str | Path) -> None:
        self.rows = RowGroupReader(shard_dir)

    def prefetch(self, units: Sequence[Unit]) -> None:
        self.rows.prefetch([u.key for u in units])

    def read(self, unit: Unit, columns: list[str]) -> pa.Table:
        return self.rows.read(unit.file, unit.row_group, columns)


# ------------------------------------------------------------------------ epoch layout

@dataclass
class _Epoch:
    units: list[int]               # this rank's unit indices, in reading order
    window_starts: np.ndarray      # first row of each window in the rank's sequence (+ total)
    window_perm: list[np.ndarray]  # row shuffle inside each window
    rows: int                      # rows this rank owns in this epoch
    length: int                    # rows it yields (padded to the largest rank)


class _Layout:
    """Which (unit, row) sits at each position of a rank's infinite row sequence."""

    def __init__(self, units: list[Unit], seed: int, rank: int, world_size: int, shuffle_units: int):
        self.rows = np.asarray([u.rows for u in units], dtype=np.int64)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_units = shuffle_units
        self._starts = [0]                     # first position of each epoch
        self._cache: OrderedDict[int, _Epoch] = OrderedDict()

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(_seed(self.seed, epoch, 0x5EED)).permutation(len(self.rows))

    def _length(self, epoch: int) -> int:
        perm = self._perm(epoch)
        return int(max(self.rows[perm[r::self.world_size]].sum() for r in range(self.world_size)))

    def epoch(self, e: int) -> _Epoch:
        if e in self._cache:
            self._cache.move_to_end(e)
            return self._cache[e]
        mine = [int(u) for u in self._perm(e)[self.rank::self.world_size]]
        windows = [mine[i:i + self.shuffle_units] for i in range(0, len(mine), self.shuffle_units)]
        sizes = [int(self.rows[w].sum()) for w in windows]
        perms = [np.random.default_rng(_seed(self.seed, e, self.rank, i, 0x5AFF)).permutation(n)
                 for i, n in enumerate(sizes)]
        ep = _Epoch(units=mine, window_starts=np.cumsum([0] + sizes), window_perm=perms,
                    rows=sum(sizes), length=self._length(e))
        self._cache[e] = ep
        if len(self._cache) > 4:
            self._cache.popitem(last=False)
        return ep

    def locate(self, position: int) -> tuple[int, int]:
        """Row position in the infinite sequence -> (epoch, position within that epoch)."""
        while self._starts[-1] <= position:
            self._starts.append(self._starts[-1] + self._length(len(self._starts) - 1))
        e = int(np.searchsorted(self._starts, position, side="right")) - 1
        return e, position - self._starts[e]

    def window_of(self, epoch: int, q: int) -> tuple[int, int]:
        """Position within an epoch -> (window, shuffled row index inside the window)."""
        ep = self.epoch(epoch)
        q %= ep.rows                                        # the padding wraps around
        w = int(np.searchsorted(ep.window_starts, q, side="right")) - 1
        return w, int(ep.window_perm[w][q - ep.window_starts[w]])


# ----------------------------------------------------------------------- training stream

class TrainStream(IterableDataset):
    """Infinite, deterministic, resumable batches of one split (see the module docstring)."""

    def __init__(self, shard_dir: str | Path, *, batch_size: int, image_size: int, split: str = "train",
                 mode: str = "v1_train", randcrop_prob: float = 0.5, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0, shuffle_units: int = 4, uint8: bool = False):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1 or start_batch < 0 or shuffle_units < 1:
            raise ValueError("batch_size and shuffle_units must be >= 1 and start_batch >= 0")
        self.shard_dir = _shard_dir(shard_dir)
        self.manifest, self.units = list_units(self.shard_dir, split)
        if len(self.units) < world_size:
            raise ShardError(f"{self.shard_dir}: split '{split}' has {len(self.units)} row group(s), fewer than "
                             f"the {world_size} ranks; lower shard.rows_per_group and re-run `dvc repro shard`")
        self.label_names = list(self.manifest["label_names"])
        self.batch_size, self.image_size, self.split = batch_size, image_size, split
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_batch = start_batch
        self.uint8 = uint8
        self.transform = build_transform(mode, image_size, self.manifest["image_size"], randcrop_prob)
        self._layout = _Layout(self.units, seed, rank, world_size, shuffle_units)

    def epoch_of_batch(self, b: int) -> int:
        """The epoch batch ``b`` starts in (for logging)."""
        return self._layout.locate(b * self.batch_size)[0]

    def batch_sources(self, b: int) -> list[tuple[int, int, int]]:
        """``(epoch, window, row in window)`` of each sample of batch ``b``: metadata only."""
        out = []
        for p in range(b * self.batch_size, (b + 1) * self.batch_size):
            e, q = self._layout.locate(p)
            out.append((e, *self._layout.window_of(e, q)))
        return out

    def _window_units(self, epoch: int, w: int) -> list[Unit]:
        ep, n = self._layout.epoch(epoch), self._layout.shuffle_units
        if w * n >= len(ep.units):                      # past this epoch's last window: the next epoch's first
            return self._window_units(epoch + 1, 0) if w > 0 else []
        return [self.units[u] for u in ep.units[w * n:(w + 1) * n]]

    def _window(self, reader: _Reader, cache: OrderedDict, epoch: int, w: int) -> pa.Table:
        if (epoch, w) not in cache:
            reader.prefetch(self._window_units(epoch, w))
            cache[(epoch, w)] = pa.concat_tables([reader.read(u, _STREAM_COLUMNS) for u in self._window_units(epoch, w)])
            reader.prefetch(self._window_units(epoch, w + 1))       # read-ahead while this window is used
            if len(cache) > 2:
                cache.popitem(last=False)
        return cache[(epoch, w)]

    def make_batch(self, b: int, reader: _Reader | None = None, cache: OrderedDict | None = None) -> dict:
        """Batch ``b`` of this rank's stream (what the iterator yields at that index)."""
        reader = reader or _Reader(self.shard_dir)
        cache = OrderedDict() if cache is None else cache
        by_window: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for j, (e, w, i) in enumerate(self.batch_sources(b)):
            by_window.setdefault((e, w), []).append((j, i))
        n = self.batch_size
        keys, images, labels = [None] * n, [None] * n, [None] * n
        for (e, w), items in by_window.items():
            rows = self._window(reader, cache, e, w).take([i for _, i in items])
            for (j, _), k, img, lab in zip(items, rows.column("key").to_pylist(), rows.column("image").to_pylist(),
                                           rows.column("labels").to_pylist()):
                keys[j], images[j], labels[j] = k, img, lab
        transform = self.transform.as_uint8 if self.uint8 else self.transform
        pixels = transform(_decode_all(images, keys, self.shard_dir), seed=_seed(self.seed, self.rank, b, 0xA06))
        return {"image": pixels, "label": torch.tensor(labels, dtype=torch.float32), "key": keys}

    def __iter__(self) -> Iterator[dict]:
        w, n = _worker()
        reader, cache = _Reader(self.shard_dir), OrderedDict()
        b = self.start_batch + w
        while True:
            yield self.make_batch(b, reader, cache)
            b += n


# ----------------------------------------------------------------------- v2 balanced stream

class BalancedStream(IterableDataset):
    """Infinite domain-balanced v2 batches ``{x_src, y_src, x_ref, x_ref2, y_ref}`` (images float in
    [-1, 1], or uint8 with ``uint8=True``, as for :class:`TrainStream`)."""

    def __init__(self, shard_dir: str | Path, *, domains: Sequence[str], batch_size: int, image_size: int,
                 split: str = "train", randcrop_prob: float = 0.5, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0, max_pool_bytes: int = 4 << 30, uint8: bool = False):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shard_dir = _shard_dir(shard_dir)
        self.manifest, units = list_units(self.shard_dir, split)
        self.domains: DomainMap = resolve_domains(self.manifest["label_names"], self.manifest["label_kind"],
                                                  list(domains))
        reader = _Reader(self.shard_dir)
        reader.prefetch(units)
        table = pa.concat_tables([reader.read(u, _STREAM_COLUMNS) for u in units]).combine_chunks()
        if table.nbytes > max_pool_bytes:
            raise ShardError(f"{self.shard_dir}: the '{split}' split holds {table.nbytes / 2**30:.1f} GiB of images, "
                             f"over the in-memory pool limit of {max_pool_bytes / 2**30:.1f} GiB for v2 training")
        labels = np.asarray(table.column("labels").to_pylist(), dtype=np.int64)
        dom, self.excluded = self.domains.assign(labels)
        self.pools = [np.flatnonzero(dom == d) for d in range(self.domains.num_domains)]
        self.domain_counts = {n: len(p) for n, p in zip(self.domains.names, self.pools)}
        small = [n for n, c in self.domain_counts.items() if c < 2]
        if small:
            raise ShardError(f"{self.shard_dir}: domain(s) {', '.join(small)} have fewer than 2 '{split}' images "
                             f"({self.domain_counts}); v2 needs reference pairs. Check train.v2.domains")
        if self.excluded:
            log.warning("%s: %d of %d '%s' images belong to no domain of %s and are excluded",
                        self.shard_dir, self.excluded, len(dom), split, self.domains.names)
        self.keys = table.column("key")
        self.images = table.column("image")
        self.batch_size, self.image_size = batch_size, image_size
        self.seed, self.rank, self.world_size, self.start_batch = seed, rank, world_size, start_batch
        self.uint8 = uint8
        self.transform = build_transform("v2_train", image_size, self.manifest["image_size"], randcrop_prob)

    def draw(self, b: int) -> dict[str, np.ndarray]:
        """Row indices and domains of batch ``b``: ``src, ref, ref2, y_src, y_ref``."""
        rng = np.random.default_rng(_seed(self.seed, self.rank, b, 0xBA1))
        k, n = self.domains.num_domains, self.batch_size
        y_src, y_ref = rng.integers(k, size=n), rng.integers(k, size=n)
        src = np.asarray([self.pools[d][rng.integers(len(self.pools[d]))] for d in y_src])
        pairs = np.asarray([self.pools[d][rng.choice(len(self.pools[d]), 2, replace=False)] for d in y_ref])
        return {"src": src, "ref": pairs[:, 0], "ref2": pairs[:, 1], "y_src": y_src, "y_ref": y_ref}

    def make_batch(self, b: int) -> dict:
        d = self.draw(b)
        rows = np.concatenate([d["src"], d["ref"], d["ref2"]])
        keys = self.keys.take(rows).to_pylist()
        images = _decode_all(self.images.take(rows).to_pylist(), keys, self.shard_dir)
        transform = self.transform.as_uint8 if self.uint8 else self.transform
        x = transform(images, seed=_seed(self.seed, self.rank, b, 0xA06))
        x_src, x_ref, x_ref2 = x.split(self.batch_size)
        n = self.batch_size
        return {"x_src": x_src, "y_src": torch.as_tensor(d["y_src"], dtype=torch.int64),
                "x_ref": x_ref, "x_ref2": x_ref2, "y_ref": torch.as_tensor(d["y_ref"], dtype=torch.int64),
                "key_src": keys[:n], "key_ref": keys[n:2 * n], "key_ref2": keys[2 * n:]}

    def __iter__(self) -> Iterator[dict]:
        w, n = _worker()
        b = self.start_batch + w
        while True:
            yield self.make_batch(b)
            b += n


# -------------------------------------------------------------------------------- helpers

def train_stream(shard_dir: str | Path, cfg: TrainConfig, *, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0) -> TrainStream | BalancedStream:
    """The training stream ``train.model`` asks for, from the typed train config (uint8 images:
    the step converts them on its device)."""
    common = dict(batch_size=cfg.batch_size, image_size=cfg.image_size, seed=cfg.seed, rank=rank,
                  world_size=world_size, start_batch=start_batch, uint8=True)
    if cfg.model == "v2":
        return BalancedStream(shard_dir, domains=cfg.v2.domains, randcrop_prob=cfg.v2.randcrop_prob, **common)
    return TrainStream(shard_dir, mode="v1_train_affine" if cfg.v1.random_affine else "v1_train", **common)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(stream: IterableDataset, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over a stream of whole batches; the batch order is the stream's order
    for any ``num_workers`` (workers are interleaved round-robin, in order). ``pin_memory`` (for a
    CUDA device) makes the steps' ``non_blocking`` host-to-device copies actually asynchronous.

    With workers, OpenCV is set to one thread in *this* process before they are forked: a forked
    worker that calls ``cv2.setNumThreads`` itself waits forever on the parent's thread pool once
    the parent has used it (a resize in the sample grids, an evaluation), so the workers inherit
    the setting instead (single-threaded decode, no oversubscription)."""
    if num_workers:
        cv2.setNumThreads(1)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init,
                      persistent_workers=num_workers > 0, prefetch_factor=2 if num_workers else None,
                      pin_memory=pin_memory)


def iter_split(shard_dir: str | Path, split: str, batch_size: int, image_size: int) -> Iterator[dict]:
    """Every row of ``split`` once, in shard order: ``image, label, key, identity int64 [B],
    matrix float32 [B,2,3], extra`` (list of dicts; ``{}`` for real data). Last batch may be short."""
    shard_dir = _shard_dir(shard_dir)
    manifest, units = list_units(shard_dir, split)
    transform = build_transform("eval", image_size, manifest["image_size"])
    pending: list[dict] = []

    def emit(rows: list[dict]) -> dict:
        keys = [r["key"] for r in rows]
        return {"image": transform(_decode_all([r["image"] for r in rows], keys, shard_dir)),
                "label": torch.tensor([r["labels"] for r in rows], dtype=torch.float32).reshape(len(rows), -1),
                "key": keys,
                "identity": torch.tensor([r["identity"] for r in rows], dtype=torch.int64),
                "matrix": torch.tensor([r["matrix"] for r in rows], dtype=torch.float32).reshape(-1, 2, 3),
                "extra": [json.loads(r["extra"]) if r["extra"] else {} for r in rows]}

    columns = ["key", "image", "labels", "identity", "matrix", "extra"]
    reader = _Reader(shard_dir)
    for i, unit in enumerate(units):
        reader.prefetch(units[i:i + 2])
        pending += reader.read(unit, columns).to_pylist()
        while len(pending) >= batch_size:
            yield emit(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        yield emit(pending)
