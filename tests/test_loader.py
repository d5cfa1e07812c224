import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from stargan.bench.data import write_aligned_set
from stargan.config import ShardConfig
from stargan.data import loader as loader_mod
from stargan.config import TrainConfig
from stargan.data.loader import BalancedStream, TrainStream, iter_split, make_loader, train_stream
from stargan.data.transforms import to_model_input, to_unit_range
from stargan.data.shards import ShardError, write_shards

B = 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 150 train images in 15 units of 10 rows (4 files): 2 ranks get 8 and 7 units.
    root = tmp_path_factory.mktemp("loader")
    al = write_aligned_set(root / "aligned", n=150, image_size=16, split="train",
                           label_names=["A", "B", "C"], label_kind="multi")
    write_shards(al, root / "shards", ShardConfig(rows_per_group=10, rows_per_shard=40))
    return root / "shards"


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    al = write_aligned_set(root / "aligned", n=120, image_size=16, split=None, identities=40,
                           label_names=["cat", "dog", "wild"], label_kind="onehot", label_probs=[0.7, 0.2, 0.1])
    write_shards(al, root / "shards", ShardConfig(rows_per_group=16, test_fraction=0.1))
    return root / "shards"


def _take(stream, n, workers=0):
    it = iter(make_loader(stream, num_workers=workers))
    out = [next(it) for _ in range(n)]
    del it
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], k


def test_batches_shape_range_and_labels(shards):
    s = TrainStream(shards, batch_size=B, image_size=8, seed=0)
    b = _take(s, 1)[0]
    assert b["image"].shape == (B, 3, 8, 8) and b["image"].dtype == torch.float32
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    assert b["label"].shape == (B, 3) and b["label"].dtype == torch.float32
    assert len(b["key"]) == B and len(set(b["key"])) == B


@pytest.mark.timeout(120)
def test_workers_start_after_this_process_used_opencvs_thread_pool(shards):
    """A forked worker calling cv2.setNumThreads hung forever once the parent had run a
    multi-threaded OpenCV op (found when a translate test ran before the loader tests)."""
    import cv2

    cv2.setNumThreads(2)
    cv2.resize(np.zeros((1500, 1500, 3), np.float32), (300, 300))
    batches = _take(TrainStream(shards, batch_size=B, image_size=16, seed=1), 4, workers=2)
    assert [len(b["key"]) for b in batches] == [B] * 4


def test_two_ranks_two_workers_cover_one_epoch_without_duplicates(shards):
    all_keys = {f"img_{i:06d}.png" for i in range(150)}
    per_rank = []
    for rank in range(2):
        s = TrainStream(shards, batch_size=B, image_size=8, seed=3, rank=rank, world_size=2)
        ep = s._layout.epoch(0)
        assert ep.length == 80 and ep.rows in (70, 80)            # padded to the larger rank
        batches = _take(s, ep.length // B, workers=2)             # exactly one epoch
        keys = [k for b in batches for k in b["key"]]
        own = keys[:ep.rows]
        assert len(set(own)) == ep.rows                             # no duplicates
        assert set(keys[ep.rows:]) <= set(own)                      # padding wraps around own rows
        assert s.epoch_of_batch(ep.length // B) == 1
        per_rank.append(set(own))
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == all_keys                   # full coverage


def test_epochs_reshuffle_and_stay_complete(shards):
    s = TrainStream(shards, batch_size=B, image_size=8, seed=0)       # 150 rows = 15 batches per epoch
    assert s.epoch_of_batch(14) == 0 and s.epoch_of_batch(15) == 1
    # batch_sources is metadata only: (epoch, window, row) of every sample, nothing decoded.
    epochs = [[src for b in range(15 * e, 15 * (e + 1)) for src in s.batch_sources(b)] for e in range(3)]
    assert all(len(set(ep)) == 150 and {src[0] for src in ep} == {e} for e, ep in enumerate(epochs))
    keys = [[k for b in range(15 * e, 15 * (e + 1)) for k in s.make_batch(b)["key"]] for e in range(2)]
    assert set(keys[0]) == set(keys[1]) and keys[0] != keys[1]


def test_deterministic_and_same_for_any_worker_count(shards):
    def run(workers, seed=1):
        return _take(TrainStream(shards, batch_size=B, image_size=8, seed=seed, rank=1, world_size=2), 9, workers)
    a = run(0)
    _same(a, run(0))
    _same(a, run(2))
    assert [b["key"] for b in run(0, seed=2)] != [b["key"] for b in a]


@pytest.mark.parametrize("workers", [0, 2])
def test_start_batch_reproduces_the_tail(shards, workers):
    full = _take(TrainStream(shards, batch_size=B, image_size=8, seed=5, mode="v2_train"), 20)
    k = 13                                          # crosses the epoch boundary at batch 15
    tail = _take(TrainStream(shards, batch_size=B, image_size=8, seed=5, mode="v2_train", start_batch=k),
                 20 - k, workers)
    _same(full[k:], tail)


def test_resume_decodes_only_what_it_yields(shards, monkeypatch):
    calls = []
    real = loader_mod.decode_shard_image
    monkeypatch.setattr(loader_mod, "decode_shard_image", lambda b, **kw: calls.append(1) or real(b, **kw))
    s = TrainStream(shards, batch_size=B, image_size=8, start_batch=1000)
    next(iter(s))
    assert len(calls) == B


def test_two_streams_side_by_side(shards, unbalanced):
    a = iter(make_loader(TrainStream(shards, batch_size=4, image_size=8)))
    b = iter(make_loader(TrainStream(unbalanced, batch_size=4, image_size=8)))
    for _ in range(3):
        assert next(a)["label"].shape == (4, 3) and next(b)["label"].shape == (4, 3)


def test_too_many_ranks_is_a_clear_error(shards):
    with pytest.raises(ShardError, match="fewer than the 16 ranks"):
        TrainStream(shards, batch_size=B, image_size=8, rank=0, world_size=16)


def test_v2_balanced_domains_and_reference_pairs(unbalanced):
    s = BalancedStream(unbalanced, domains=[], batch_size=16, image_size=8, seed=0)
    counts = s.domain_counts
    assert counts["cat"] > 2 * counts["wild"] and s.excluded == 0       # unbalanced data
    y_src, y_ref = [], []
    for b in range(300):
        d = s.draw(b)
        y_src += d["y_src"].tolist()
        y_ref += d["y_ref"].tolist()
        assert (d["ref"] != d["ref2"]).all()
        pools = [set(p.tolist()) for p in s.pools]
        assert all(r in pools[y] and r2 in pools[y] for r, r2, y in zip(d["ref"], d["ref2"], d["y_ref"]))
        assert all(x in pools[y] for x, y in zip(d["src"], d["y_src"]))
    for ys in (y_src, y_ref):
        obs = np.bincount(ys, minlength=3)
        exp = len(ys) / 3
        assert ((obs - exp) ** 2 / exp).sum() < 13.8                     # chi-square, 2 dof, p=0.001
    batch = s.make_batch(0)
    assert batch["x_src"].shape == batch["x_ref"].shape == batch["x_ref2"].shape == (16, 3, 8, 8)
    assert batch["y_src"].dtype == batch["y_ref"].dtype == torch.int64
    assert all(a != b for a, b in zip(batch["key_ref"], batch["key_ref2"]))


@pytest.mark.parametrize("workers", [0, 2])
def test_v2_resume(unbalanced, workers):
    def stream(start):
        return BalancedStream(unbalanced, domains=["cat", "wild"], batch_size=4, image_size=8, seed=9,
                              start_batch=start)
    full = _take(stream(0), 7)
    _same(full[3:], _take(stream(3), 4, workers))


def test_v2_excluded_rows_are_counted(shards):
    s = BalancedStream(shards, domains=["A", "B"], batch_size=4, image_size=8)
    labels = np.asarray([r["labels"] for p in sorted(shards.glob("train-*.parquet"))
                         for r in pq.read_table(p).to_pylist()])
    exclusive = (labels[:, 0] + labels[:, 1]) == 1
    assert s.excluded == int((~exclusive).sum()) > 0
    assert sum(s.domain_counts.values()) == int(exclusive.sum())


def test_iter_split_is_complete_ordered_and_plain(unbalanced):
    a = list(iter_split(unbalanced, "train", 16, 8))
    b = list(iter_split(unbalanced, "train", 16, 8))
    _same(a, b)
    keys = [k for x in a for k in x["key"]]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(len(x["key"]) == 16 for x in a[:-1]) and 0 < len(a[-1]["key"]) <= 16
    x = a[0]
    assert x["matrix"].shape == (16, 2, 3) and x["identity"].dtype == torch.int64
    assert x["extra"][0] == {} and x["image"].min() >= -1 and x["image"].max() <= 1
    with pytest.raises(ShardError, match="no 'val' rows"):
        next(iter_split(unbalanced, "val", 4, 8))


@pytest.mark.parametrize("workers", [0, 2])
def test_uint8_streams_carry_exactly_the_float_batches(shards, unbalanced, workers):
    # Training ships uint8 and converts on the device; the model must see the same numbers.
    f = _take(TrainStream(shards, batch_size=B, image_size=8, seed=4), 3)
    u = _take(TrainStream(shards, batch_size=B, image_size=8, seed=4, uint8=True), 3, workers)
    for a, b in zip(f, u):
        assert b["image"].dtype == torch.uint8 and b["image"].shape == (B, 3, 8, 8)
        assert torch.equal(to_unit_range(b["image"]), a["image"]) and torch.equal(a["label"], b["label"])
    kw = dict(domains=["cat", "wild"], batch_size=4, image_size=8, seed=2)
    f = _take(BalancedStream(unbalanced, **kw), 2)
    u = _take(BalancedStream(unbalanced, uint8=True, **kw), 2, workers)
    for a, b in zip(f, u):
        for k in ("x_src", "x_ref", "x_ref2"):
            assert b[k].dtype == torch.uint8 and torch.equal(to_unit_range(b[k]), a[k]), k


def test_training_streams_are_uint8_and_to_model_input_converts_them(shards):
    s = train_stream(shards, TrainConfig(batch_size=4, image_size=8))
    batch = next(iter(s))
    assert s.uint8 and batch["image"].dtype == torch.uint8
    x = to_model_input(batch["image"], torch.device("cpu"), torch.channels_last)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, to_unit_range(batch["image"]))
    assert float(to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)).abs().max()) == 1.0
    floats = torch.rand(2, 3, 4, 4)
    assert torch.equal(to_model_input(floats, torch.device("cpu")), floats)   # float batches only move


def test_random_affine_reframes_the_v1_training_images_and_only_when_asked(shards):
    """train.v1.random_affine: the same images and labels, most of them reframed (not only mirrored);
    off (the paper), exactly the flips-only stream."""
    import dataclasses

    plain_cfg = TrainConfig(batch_size=8, image_size=16)
    affine_cfg = dataclasses.replace(plain_cfg, v1=dataclasses.replace(plain_cfg.v1, random_affine=True))
    plain, affine = train_stream(shards, plain_cfg), train_stream(shards, affine_cfg)
    assert (plain.transform.mode, affine.transform.mode) == ("v1_train", "v1_train_affine")
    a, b = next(iter(plain)), next(iter(affine))
    assert torch.equal(a["label"], b["label"])
    x, y = a["image"].float(), b["image"].float()
    moved = torch.minimum((x - y).abs().mean(dim=(1, 2, 3)), (x.flip(-1) - y).abs().mean(dim=(1, 2, 3))) > 2.0
    assert 3 <= int(moved.sum()) <= 8
    assert torch.equal(next(iter(train_stream(shards, plain_cfg)))["image"], a["image"])
