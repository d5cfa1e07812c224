"""The one decode/encode path: every odd file becomes RGB uint8 or a clear ImageDecodeError."""
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from stargan.data.imageio import (ImageDecodeError, decode_image, decode_shard_image, encode_image, encode_jpeg,
                                  encode_png, write_image)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(h=24, w=32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 77)], -1).astype(np.uint8)


def _check_rgb(a, h, w):
    assert a.dtype == np.uint8 and a.shape == (h, w, 3) and a.flags["C_CONTIGUOUS"]


def test_png_roundtrip_is_lossless_and_deterministic(tmp_path):
    rgb = _gradient()
    data = encode_png(rgb)
    assert encode_png(rgb.copy()) == data
    np.testing.assert_array_equal(decode_image(data), rgb)
    write_image(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(decode_image(tmp_path / "a.png"), rgb)


def test_jpeg_encode_close_and_deterministic():
    rgb = _gradient()
    data = encode_image(rgb, "jpeg", 95)
    assert data[:2] == b"\xff\xd8" and encode_jpeg(rgb, 95) == data
    assert np.abs(decode_image(data).astype(int) - rgb).mean() < 3
    with pytest.raises(ValueError, match="unknown image format"):
        encode_image(rgb, "gif")
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_png(rgb.astype(np.float32))


def test_truncated_jpeg_is_a_clear_error():
    data = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2], name="x.jpg")


def test_truncated_png_and_random_bytes_and_empty(tmp_path):
    data = encode_png(_gradient())
    for cut in (len(data) // 2, len(data) - 20):
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image(data[:cut])
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(np.random.default_rng(1).bytes(500))
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="cannot read"):
        decode_image(tmp_path / "missing.png")
    p = tmp_path / "bad.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        decode_image(p)


def test_cmyk_jpeg():
    img = Image.new("CMYK", (8, 6), (0, 255, 255, 0))         # pure red in CMYK
    a = decode_image(_save(img, "JPEG", quality=95))
    _check_rgb(a, 6, 8)
    assert a[..., 0].min() > 230 and a[..., 1].max() < 25 and a[..., 2].max() < 25


def test_16bit_png_gray_and_rgb():
    g16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365)
    ok, buf = cv2.imencode(".png", g16)
    a = decode_image(buf.tobytes())
    _check_rgb(a, 6, 8)
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
    assert np.abs(a[..., 0].astype(int) - np.rint(g16 / 257.0)).max() <= 1
    rgb16 = np.stack([g16, 65535 - g16, np.full_like(g16, 32896)], -1)
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1])               # OpenCV writes BGR
    b = decode_image(buf.tobytes())
    assert np.abs(b.astype(int) - np.rint(rgb16 / 257.0)).max() <= 1


def test_grayscale_and_bilevel():
    g = _gradient()[..., 0]
    a = decode_image(_save(Image.fromarray(g, "L"), "PNG"))
    np.testing.assert_array_equal(a, np.repeat(g[..., None], 3, 2))
    b = decode_image(_save(Image.fromarray(g > 128), "PNG"))
    assert set(np.unique(b)) <= {0, 255}


def test_rgba_and_la_composite_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200                    # red-ish
    rgba[:2, :, 3] = 255                  # top opaque, bottom transparent
    rgba[2, :, 3] = 128                   # half
    a = decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(a[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(a[3, 0], [255, 255, 255])
    assert abs(int(a[2, 0, 0]) - 228) <= 1 and abs(int(a[2, 0, 1]) - 127) <= 1
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    b = decode_image(_save(la, "PNG"))
    np.testing.assert_array_equal(b[3, 0], [255, 255, 255])
    np.testing.assert_array_equal(b[0, 0], [200, 200, 200])


def test_palette_with_and_without_transparency():
    p = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    ref = np.asarray(p.convert("RGB"))
    np.testing.assert_array_equal(decode_image(_save(p, "PNG")), ref)
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    a = decode_image(_save(p, "PNG", transparency=int(np.asarray(p)[0, 0])))
    np.testing.assert_array_equal(a[0, 0], [255, 255, 255])


def test_exif_orientation_is_applied():
    rgb = np.zeros((20, 40, 3), np.uint8)     # wide image, red marker at the top-left
    rgb[:4, :4] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = 6                           # "rotate 90 CW to display"
    data = _save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    a = decode_image(data)
    _check_rgb(a, 40, 20)                      # now tall
    assert a[:4, -4:, 0].mean() > 200 and a[:4, -4:, 1].mean() < 60   # marker moved to the top-right


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (10, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    a = decode_image(buf.getvalue())
    _check_rgb(a, 8, 10)
    assert a[..., 0].min() > 240 and a[..., 2].max() < 15


def _photo(h=48, w=40) -> np.ndarray:
    rng = np.random.default_rng(3)
    return cv2.resize(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_shard_decode_is_bit_identical_to_the_general_path(fmt):
    # The loaders' fast path must not change a single pixel of what the shard stage wrote.
    data = encode_image(_photo(), fmt, 95)
    fast = decode_shard_image(data, name="k")
    _check_rgb(fast, 48, 40)
    np.testing.assert_array_equal(fast, decode_image(data))


def test_shard_decode_falls_back_for_files_it_does_not_own():
    rgba = np.dstack([_photo(), np.full((48, 40), 128, np.uint8)])
    data = _save(Image.fromarray(rgba, "RGBA"), "PNG")
    # alpha is still composited on white, as decode_image does (OpenCV would drop it)
    np.testing.assert_array_equal(decode_shard_image(data), decode_image(data))
    gray = _save(Image.fromarray(_photo()[..., 0], "L"), "PNG")
    np.testing.assert_array_equal(decode_shard_image(gray), decode_image(gray))


def test_shard_decode_of_a_damaged_file_is_the_general_error():
    jpeg = encode_jpeg(_photo())
    with pytest.raises(ImageDecodeError, match="shard image 'a'.*truncated"):
        decode_shard_image(jpeg[: len(jpeg) // 2], name="shard image 'a'")
    png = encode_png(_photo())
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_shard_image(png[:-20])
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_shard_image(b"\xff\xd8\xff" + bytes(100) + b"\xff\xd9")
