import dataclasses
import hashlib
import importlib.util
import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stargan.bench.data import write_aligned_set
from stargan.config import ShardConfig
from stargan.data.imageio import decode_image, encode_png
from stargan.data.loader import TrainStream, iter_split
from stargan.data.shards import ShardError, open_shard, read_manifest, verify_shards, write_shards

CFG = ShardConfig(rows_per_group=8, rows_per_shard=20, test_fraction=0.2, val_fraction=0.1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def aligned(tmp_path):
    # No official split (RaFD-like): 36 identities, one-hot labels.
    return write_aligned_set(tmp_path / "aligned" / "toy", n=72, image_size=32, name="toy", split=None,
                             identities=36, label_kind="onehot", label_names=["angry", "happy", "sad"])


def _all_rows(shard_dir):
    m = read_manifest(shard_dir)
    return [r for f in m["files"] for r in pq.read_table(shard_dir / f["path"]).to_pylist()]


def test_same_inputs_same_bytes(aligned, tmp_path):
    m1 = write_shards(aligned, tmp_path / "a", CFG)
    m2 = write_shards(aligned, tmp_path / "b", CFG)
    assert m1 == m2
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for f in m1["files"]:
        assert (tmp_path / "a" / f["path"]).read_bytes() == (tmp_path / "b" / f["path"]).read_bytes()


def test_layout_counts_and_columns(aligned, tmp_path):
    out = tmp_path / "shards"
    m = write_shards(aligned, out, CFG, name="toy")
    assert sorted(p.name for p in out.iterdir()) == sorted([f["path"] for f in m["files"]] + ["manifest.json"])
    assert sum(c["total"] for c in m["counts"].values()) == 72
    for split, c in m["counts"].items():
        assert sum(c["per_label"].values()) == c["total"]          # one-hot
    for f in m["files"]:
        pf = pq.ParquetFile(out / f["path"])
        assert f["path"].startswith(f["split"] + "-") and f["rows"] <= 20 == CFG.rows_per_shard
        assert pf.metadata.num_rows == f["rows"] and pf.num_row_groups == f["row_groups"]
        assert all(pf.metadata.row_group(i).num_rows <= 8 for i in range(pf.num_row_groups))
        t = pf.read()
        assert str(t.schema.field("labels").type) == "list<element: int8>"
        assert t.column("key").to_pylist() == sorted(t.column("key").to_pylist())
        assert set(t.column("split").to_pylist()) == {f["split"]} and set(t.column("dataset").to_pylist()) == {"toy"}
    rows = _all_rows(out)
    r = rows[0]
    assert r["image"] == (aligned / "images" / r["key"]).read_bytes()     # PNG passes through unchanged
    assert len(r["matrix"]) == 6 and r["extra"] == ""
    assert m["image_size"] == 32 and m["image_format"] == "png" and m["label_kind"] == "onehot"


def test_split_by_identity_is_disjoint_and_stable(aligned, tmp_path):
    write_shards(aligned, tmp_path / "a", CFG)
    rows = _all_rows(tmp_path / "a")
    splits_of = {}
    for r in rows:
        splits_of.setdefault(r["identity"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())                 # no identity crosses splits
    assert {r["split"] for r in rows} == {"train", "test", "val"}
    before = {r["key"]: r["split"] for r in rows}
    # Add a record (a new identity) to the aligned set: every existing record keeps its split.
    extra = write_aligned_set(tmp_path / "more", n=1, image_size=32, split=None, identities=1,
                              label_kind="onehot", label_names=["angry", "happy", "sad"], seed=5)
    (aligned / "images" / "zz_new.png").write_bytes((extra / "images" / "img_000000.png").read_bytes())
    row = {"key": "zz_new.png", "file": "images/zz_new.png", "labels": [1, 0, 0], "split": "",
           "identity": 99, "matrix": [[1, 0, 0], [0, 1, 0]], "method": "centre_crop", "extra": {}}
    with open(aligned / "index.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    write_shards(aligned, tmp_path / "b", CFG)
    after = {r["key"]: r["split"] for r in _all_rows(tmp_path / "b")}
    assert len(after) == 73 and all(after[k] == s for k, s in before.items())


def test_official_split_is_kept(tmp_path):
    al = write_aligned_set(tmp_path / "al", n=10, image_size=16, split="val")
    m = write_shards(al, tmp_path / "s", CFG)
    assert list(m["counts"]) == ["val"] and m["counts"]["val"]["total"] == 10


def test_verify_detects_a_flipped_byte_and_names_the_file(aligned, tmp_path):
    out = tmp_path / "s"
    m = write_shards(aligned, out, CFG)
    assert verify_shards(out) == m
    victim = out / m["files"][1]["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=m["files"][1]["path"]) as e:
        verify_shards(out)
    assert "sha256" in str(e.value) and "dvc repro shard" in str(e.value)


def test_verify_missing_and_unreadable_files(aligned, tmp_path):
    out = tmp_path / "s"
    m = write_shards(aligned, out, CFG)
    name = m["files"][0]["path"]
    (out / name).write_bytes(b"not parquet at all")
    # Make the checksum agree so the parquet reader is what complains.
    man = json.loads((out / "manifest.json").read_text())
    man["files"][0]["sha256"] = hashlib.sha256(b"not parquet at all").hexdigest()
    (out / "manifest.json").write_text(json.dumps(man))
    assert verify_shards(out)["files"][0]["sha256"] == man["files"][0]["sha256"]
    with pytest.raises(ShardError, match=f"{name}: unreadable parquet"):
        open_shard(out, man["files"][0])
    (out / name).unlink()
    with pytest.raises(ShardError, match=f"{name}: missing"):
        verify_shards(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ShardError, match="manifest.json: missing"):
        read_manifest(out)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_shard_is_refused_in_one_line_naming_the_file(aligned, tmp_path, damage):
    """One flipped byte (which libjpeg would only warn about) or a cut-off file: every reader
    (training streams, evaluation) refuses the shard set before reading an image."""
    out = tmp_path / "s"
    m = write_shards(aligned, out, dataclasses.replace(CFG, image_format="jpeg"))
    path = out / m["files"][-1]["path"]
    data = bytearray(path.read_bytes())
    verify_shards(out)                      # hashed once in this process ...
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-100:]
    time.sleep(0.01)
    path.write_bytes(bytes(data))           # ... and hashed again once the file changes
    for read in (verify_shards, lambda d: iter_split(d, m["files"][-1]["split"], 4, 16).__next__(),
                 lambda d: TrainStream(d, batch_size=4, image_size=16, split=m["files"][-1]["split"])):
        with pytest.raises(ShardError) as e:
            read(out)
        msg = str(e.value)
        assert msg.startswith(f"{path}: sha256 differs from manifest.json") and "dvc repro shard" in msg
        assert "\n" not in msg


def test_missing_image_names_the_key_and_leaves_nothing_behind(aligned, tmp_path):
    out = tmp_path / "shards" / "toy"
    write_shards(aligned, out, CFG)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (aligned / "images" / "img_000007.png").unlink()
    with pytest.raises(ShardError, match="img_000007.png"):
        write_shards(aligned, out, CFG)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before        # old shards untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]            # no temp folders left


def test_malformed_index_row_names_the_line(aligned, tmp_path):
    with open(aligned / "index.jsonl", "a") as f:
        f.write('{"key": "bad.png", "file": "images/bad.png", "labels": [1, 0], "split": "", '
                '"identity": 1, "matrix": [[1,0,0],[0,1,0]]}\n')
    with pytest.raises(ShardError, match=r"index.jsonl:73: key 'bad.png' has labels"):
        write_shards(aligned, tmp_path / "s", CFG)


def test_jpeg_format(aligned, tmp_path):
    cfg = ShardConfig(image_format="jpeg", jpeg_quality=90, rows_per_group=8, rows_per_shard=100)
    m = write_shards(aligned, tmp_path / "s", cfg)
    r = _all_rows(tmp_path / "s")[0]
    assert r["image"][:2] == b"\xff\xd8" and m["image_format"] == "jpeg"
    src = decode_image(aligned / "images" / r["key"]).astype(int)
    assert np.abs(decode_image(r["image"]).astype(int) - src).mean() < 4


def _stage(argv):
    spec = importlib.util.spec_from_file_location("shard_stage", REPO / "pipelines" / "shard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from stargan.stage import run_stage
    return run_stage("shard", mod.main, argv)


def test_stage_script(aligned, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tmp_path}\n  datasets:\n    toy: {{source: synthetic, layout: rafd}}\n"
                      "train:\n  datasets: [toy]\nshard:\n  rows_per_group: 16\n")
    assert _stage(["--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "toy:" in out and "train=" in out and "test=" in out
    verify_shards(tmp_path / "shards" / "toy")
    # A missing aligned folder: one line on stderr, exit status 2.
    params.write_text(params.read_text().replace("toy:", "nope:").replace("[toy]", "[nope]"))
    assert _stage(["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dvc repro align" in err and "Traceback" not in err


def test_wrong_size_or_non_rgb_png(aligned, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(buf, format="PNG")
    (aligned / "images" / "img_000003.png").write_bytes(buf.getvalue())       # 8-bit grey: re-encoded
    write_shards(aligned, tmp_path / "a", CFG)
    row = next(r for r in _all_rows(tmp_path / "a") if r["key"] == "img_000003.png")
    assert decode_image(row["image"]).shape == (32, 32, 3) and row["image"][25] == 2
    (aligned / "images" / "img_000004.png").write_bytes(encode_png(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(ShardError, match=r"img_000004.png.*16x16, expected 32x32"):
        write_shards(aligned, tmp_path / "b", CFG)
