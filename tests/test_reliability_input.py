"""Bad input refused, odd input converted: a seeded fuzz corpus through the align and shard stages.

Every file is either converted correctly (checked against the expected pixels) or rejected with a
reason in report.json; the stage itself never dies. Random bytes, truncations and bit flips come
from a seeded numpy generator (no hypothesis), so a failure reproduces exactly.
test_imageio.py checks the decoder on each mode alone; here the same kinds of files go through
the stages as a user's folder would, mixed with good images and garbage.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stargan.config import AlignConfig, DatasetSpec, ShardConfig
from stargan.data.align import align_dataset, align_face
from stargan.data.formats import DatasetIndex, RawRecord
from stargan.data.imageio import encode_png

SIZE = 32
SEED = 20260


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header for a huge image with a few bytes of pixel data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def photo(rng: np.random.Generator, h: int = 48, w: int = 40) -> np.ndarray:
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def expected_centre(rgb: np.ndarray) -> np.ndarray:
    return align_face(rgb, SIZE, crop=0).image


def corpus(rng: np.random.Generator) -> dict[str, tuple[bytes, object]]:
    """name -> (file bytes, expectation): an array (the aligned pixels, exact unless a tolerance
    is given as (array, atol)), "any" (either outcome is fine, e.g. a bit flip that still decodes), or
    a substring of the rejection reason."""
    out: dict[str, tuple[bytes, object]] = {}
    good = photo(rng)
    good_png, good_jpg = encode_png(good), save(Image.fromarray(good), "JPEG", quality=95)
    out["good_png.png"] = (good_png, expected_centre(good))
    out["good_jpg.jpg"] = (good_jpg, (expected_centre(np.asarray(Image.open(io.BytesIO(good_jpg)).convert("RGB"))), 0))
    # ---- odd but valid: converted
    out["gray.png"] = (save(Image.new("L", (40, 40), 77), "PNG"), np.full((SIZE, SIZE, 3), 77, np.uint8))
    out["bilevel.png"] = (save(Image.new("1", (40, 40), 1), "PNG"), np.full((SIZE, SIZE, 3), 255, np.uint8))
    g16 = Image.fromarray(np.full((40, 40), 200 * 257, np.uint16))
    out["gray16.png"] = (save(g16, "PNG"), np.full((SIZE, SIZE, 3), 200, np.uint8))
    out["cmyk.jpg"] = (save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95),
                       (np.broadcast_to(np.array([255, 0, 0], np.uint8), (SIZE, SIZE, 3)), 6))
    out["clear.png"] = (save(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG"), np.full((SIZE, SIZE, 3), 255, np.uint8))
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out["animated.gif"] = (save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
                           np.broadcast_to(np.array([255, 0, 0], np.uint8), (SIZE, SIZE, 3)))
    wide = photo(rng, 40, 64)
    exif = Image.Exif()
    exif[0x0112] = 6                                     # "rotate 90 CW to display"
    out["exif_rotated.png"] = (save(Image.fromarray(wide), "PNG", exif=exif.tobytes()),
                               expected_centre(np.ascontiguousarray(np.rot90(wide, k=-1))))
    out["tiny_1x1.bmp"] = (save(Image.new("RGB", (1, 1), (9, 99, 199)), "BMP"),
                           np.broadcast_to(np.array([9, 99, 199], np.uint8), (SIZE, SIZE, 3)))
    out["palette.gif"] = (save(Image.fromarray(good).convert("P"), "GIF"), "any")
    out["webp.webp"] = (save(Image.fromarray(good), "WEBP", lossless=True), expected_centre(good))
    out["tiff.tif"] = (save(Image.fromarray(good), "TIFF"), expected_centre(good))
    # ---- bad: rejected with a reason
    out["empty.png"] = (b"", "empty file")
    out["html.jpg"] = (b"<!DOCTYPE html><html><body>quota exceeded</body></html>", "not a recognised image format")
    out["bomb_100k.png"] = (png_claiming(100_000, 100_000), "too large")
    out["bomb_20k.png"] = (png_claiming(20_000, 20_000), "too large")
    out["zero_width.png"] = (png_claiming(0, 40), "unreadable")
    for i in range(6):
        n = int(rng.integers(1, 4096))
        out[f"random_{i}.jpg"] = (rng.integers(0, 256, n, dtype=np.uint8).tobytes(), "unreadable")
    for i in range(5):
        src = (good_png, good_jpg)[i % 2]
        cut = int(rng.integers(8, len(src) - 8))
        out[f"truncated_{i}.{('png', 'jpg')[i % 2]}"] = (src[:cut], "any" if i % 2 else "unreadable")
    for i in range(6):
        src = bytearray((good_png, good_jpg)[i % 2])
        for pos in rng.integers(0, len(src), size=int(rng.integers(1, 8))):
            src[pos] ^= 1 << int(rng.integers(0, 8))
        out[f"flipped_{i}.{('png', 'jpg')[i % 2]}"] = (bytes(src), "any")
    return out


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x10
    return bytes(b)


def _index(folder: Path, files: dict[str, tuple[bytes, object]]) -> DatasetIndex:
    recs = []
    for name, (data, _) in sorted(files.items()):
        (folder / name).write_bytes(data)
        recs.append(RawRecord(key=name, path=folder / name, labels=(1, 0), split="train"))
    return DatasetIndex("fuzz", "folders", ["a", "b"], "multi", recs)


@pytest.mark.parametrize("workers", [1, 2])
def test_align_converts_or_rejects_every_file_with_a_reason(tmp_path, workers):
    files = corpus(np.random.default_rng(SEED))
    raw = tmp_path / "raw"
    raw.mkdir()
    out = tmp_path / "aligned" / "fuzz"
    report = align_dataset(_index(raw, files), out, AlignConfig(image_size=SIZE, workers=workers),
                           DatasetSpec(aligned=True, layout="folders"))
    rejected = {r["key"]: r["reason"] for r in report["rejected"]}
    rows = {json.loads(ln)["key"]: json.loads(ln) for ln in (out / "index.jsonl").read_text().splitlines()}
    assert report["total"] == len(files) == len(rows) + len(rejected), "every file is accounted for, once"
    assert all(reason.strip() for reason in rejected.values())
    for name, (_, expect) in files.items():
        anything = isinstance(expect, str) and expect == "any"
        if isinstance(expect, str) and not anything:
            assert name in rejected, f"{name} should be rejected ({expect})"
            assert expect in rejected[name], f"{name}: reason {rejected[name]!r} lacks {expect!r}"
            continue
        if anything and name in rejected:
            continue
        assert name in rows, f"{name} should be converted, was rejected: {rejected.get(name)}"
        img = np.asarray(Image.open(out / rows[name]["file"]))
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8, name
        if not anything:
            want, atol = expect if isinstance(expect, tuple) else (expect, 0)
            diff = np.abs(img.astype(int) - want.astype(int)).max()
            assert diff <= atol, f"{name}: differs from the expected conversion by {diff}"
    # the shard stage takes whatever align accepted, byte for byte
    from stargan.data.shards import verify_shards, write_shards

    manifest = write_shards(out, tmp_path / "shards" / "fuzz", ShardConfig(rows_per_group=8), name="fuzz")
    assert sum(c["total"] for c in manifest["counts"].values()) == len(rows)
    verify_shards(tmp_path / "shards" / "fuzz")


def test_shard_stage_converts_odd_aligned_files_or_fails_with_one_clear_error(tmp_path):
    """An aligned folder edited by hand: each odd image is re-encoded (same size) or the stage
    stops with a ShardError naming the key, never another exception."""
    from stargan.bench.data import write_aligned_set
    from stargan.data.loader import iter_split
    from stargan.data.shards import ShardError, write_shards

    rng = np.random.default_rng(SEED + 1)
    good = photo(rng, SIZE, SIZE)
    cases = {
        "jpeg_same_size": (save(Image.fromarray(good), "JPEG", quality=95), "ok"),
        "gray16_same_size": (save(Image.fromarray(np.full((SIZE, SIZE), 5140, np.uint16)), "PNG"), "ok"),
        "rgba_same_size": (save(Image.fromarray(np.dstack([good, np.full((SIZE, SIZE), 255, np.uint8)])), "PNG"), "ok"),
        "wrong_size": (encode_png(photo(rng, SIZE + 1, SIZE)), "expected 32x32"),
        "random_bytes": (rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), "cannot be decoded"),
        "truncated": (encode_png(good)[:60], "cannot be decoded"),
        "bit_flip_in_pixels": (_flip(encode_png(good), 60), "cannot be decoded"),
        "bomb": (png_claiming(100_000, 100_000), "cannot be decoded"),
    }
    for name, (data, expect) in cases.items():
        aligned = write_aligned_set(tmp_path / name / "aligned", n=3, image_size=SIZE)
        victim = aligned / "images" / "img_000001.png"
        victim.write_bytes(data)
        out = tmp_path / name / "shards"
        if expect == "ok":
            write_shards(aligned, out, ShardConfig(), name=name)
            batch = next(iter_split(out, "train", 3, SIZE))
            assert batch["image"].shape == (3, 3, SIZE, SIZE), name
            continue
        with pytest.raises(ShardError) as e:
            write_shards(aligned, out, ShardConfig(), name=name)
            pytest.fail(f"{name}: no error")
        assert "img_000001.png" in str(e.value) and expect in str(e.value), f"{name}: {e.value}"
        assert "dvc repro align" in str(e.value)
        assert not out.exists() and [p.name for p in out.parent.iterdir()] == ["aligned"], "nothing half-written"
