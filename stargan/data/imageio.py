"""The one image decode/encode path of the project.

Every stage that reads an image file (align, translate, the loaders) calls :func:`decode_image`,
and every stage that writes one calls :func:`encode_image` (or :func:`encode_png` /
:func:`encode_jpeg`), so colour handling is the same everywhere:

- output is always ``uint8`` RGB, shape ``(H, W, 3)``, C-contiguous;
- EXIF orientation is applied (a phone photo comes out upright);
- grayscale (``1``, ``L``, 16-bit ``I;16``/``I``) is replicated to three channels; 16-bit
  values are scaled to 8 bits with rounding (``v / 257``);
- palette images go through their palette (with transparency when they have one);
- CMYK (and Adobe-inverted CMYK) JPEGs are converted by Pillow's CMYK -> RGB;
- **alpha is composited on white** (``RGBA``, ``LA``, ``PA``, palette transparency): a cut-out
  portrait on a transparent background becomes a portrait on white, as a browser shows it,
  rather than on whatever colour the hidden pixels happen to hold;
- animated images (GIF, APNG, WebP) give their first frame;
- anything that is not a readable, complete image raises :class:`ImageDecodeError` naming the
  source and the cause (truncated, not an image, unsupported mode, too large, empty).

The training loaders read images the shard stage wrote itself (8-bit RGB PNG or baseline JPEG,
no metadata): :func:`decode_shard_image` decodes those with OpenCV straight to RGB, about twice
as fast as the general path and bit-identical to it on such files (checked on all 9,392 shard
images of the default synthetic sets and of the 4,000-image CelebA sample at 128 and 256 px), and
hands anything else - another PNG colour type, a JPEG without its end marker, a file OpenCV
refuses - to :func:`decode_image`, so a bad shard still fails with its message.

Encoding is deterministic: the same array gives the same bytes (no timestamps or metadata
chunks are written).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stargan.errors import StarganError

#: Refuse images above this many pixels (a decompression bomb guard); 16k x 16k.
MAX_PIXELS = 16384 * 16384

_BytesLike = (bytes, bytearray, memoryview)


class ImageDecodeError(StarganError, ValueError):
    """A file or byte string that cannot be decoded to an RGB image; the message says why."""


def _describe(source, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{len(source)} bytes>"


def read_bytes(path: str | Path) -> bytes:
    """Read a file's bytes, mapping OS errors to :class:`ImageDecodeError`."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read ({e.strerror or e})") from None


def decode_image(source: bytes | bytearray | memoryview | str | Path, *, name: str | None = None) -> np.ndarray:
    """Decode an image file (path) or its bytes to RGB ``uint8`` ``(H, W, 3)``.

    ``name`` is used in error messages in place of the path / byte count.
    """
    what = _describe(source, name)
    data = read_bytes(source) if isinstance(source, (str, Path)) else bytes(source)
    if not isinstance(data, bytes):
        raise ImageDecodeError(f"{what}: expected bytes or a path, got {type(source).__name__}")
    if not data:
        raise ImageDecodeError(f"{what}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageDecodeError(f"{what}: {w}x{h} is too large (more than {MAX_PIXELS} pixels)")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            if img.format == "PNG" and data.rfind(b"IEND") < 0:
                # Pillow decodes a PNG whose pixel data is complete but whose end is cut off.
                raise ImageDecodeError(f"{what}: cannot decode: PNG has no IEND chunk "
                                       "(truncated or corrupt file; re-download it)")
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, what)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{what}: not a recognised image format "
                               f"(first bytes {data[:8]!r}); expected JPEG, PNG, GIF, BMP, WebP or TIFF") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{what}: too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
        msg = str(e) or type(e).__name__
        hint = " (truncated or corrupt file; re-download it)" if "truncat" in msg.lower() or isinstance(e, EOFError) \
            else " (corrupt file)"
        raise ImageDecodeError(f"{what}: cannot decode: {msg}{hint}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, never a crash
        raise ImageDecodeError(f"{what}: cannot decode: {type(e).__name__}: {e}") from None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)      # OpenCV >= 4.10


def _written_by_us(data: bytes) -> bool:
    """A complete 8-bit RGB PNG, or a JPEG that ends with its EOI marker (what encode_image writes)."""
    if data[:8] == _PNG_SIGNATURE:
        return len(data) > 45 and data[12:16] == b"IHDR" and data[24] == 8 and data[25] == 2 \
            and data[-8:-4] == b"IEND"
    return data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"


def decode_shard_image(data: bytes, *, name: str | None = None) -> np.ndarray:
    """:func:`decode_image` for shard bytes, fast where the file is what the shard stage writes."""
    if isinstance(data, bytes) and _written_by_us(data):
        buf = np.frombuffer(data, np.uint8)
        if _IMREAD_RGB is not None:
            rgb = cv2.imdecode(buf, _IMREAD_RGB)
        else:
            bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            rgb = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb is not None and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8:
            return rgb
    return decode_image(data, name=name)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _to_rgb(img: Image.Image, what: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img)
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        v = np.asarray(img).astype(np.float64)
        # I;16* is 16-bit; 32-bit "I" holding only 0..255 is 8-bit data in a wide container.
        g = v if mode == "I" and v.max(initial=0) <= 255 else v / 257.0
        g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        arr = np.repeat(g[..., None], 3, axis=2)
    elif mode == "F":
        raise ImageDecodeError(f"{what}: floating-point images (mode F) are not supported; "
                               "convert it to an 8-bit PNG or JPEG")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        arr = _composite_on_white(np.asarray(img.convert("RGBA")))
    elif mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(img.convert("RGB"))
    else:
        try:
            arr = np.asarray(img.convert("RGB"))
        except (ValueError, OSError) as e:
            raise ImageDecodeError(f"{what}: unsupported image mode {mode!r} ({e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageDecodeError(f"{what}: decoded to an unexpected array {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(f"{what}: image has no pixels ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)


def encode_png(rgb: np.ndarray, compress_level: int = 6) -> bytes:
    """RGB uint8 -> PNG bytes (deterministic: no metadata chunks)."""
    buf = io.BytesIO()
    Image.fromarray(_check_rgb(rgb), "RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 -> baseline JPEG bytes; 4:4:4 chroma at quality >= 90 (faces keep colour edges)."""
    buf = io.BytesIO()
    Image.fromarray(_check_rgb(rgb), "RGB").save(buf, format="JPEG", quality=int(quality),
                                                 subsampling=0 if quality >= 90 else 2, optimize=False)
    return buf.getvalue()


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode with the format named in params (``shard.image_format``: png | jpeg)."""
    fmt = fmt.lower()
    if fmt == "png":
        return encode_png(rgb)
    if fmt in ("jpeg", "jpg"):
        return encode_jpeg(rgb, quality)
    raise ValueError(f"unknown image format {fmt!r}; use png or jpeg")


def write_image(path: str | Path, rgb: np.ndarray, quality: int = 95) -> None:
    """Encode by the path's suffix (.png / .jpg / .jpeg) and write the bytes."""
    path = Path(path)
    fmt = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix; use .png, .jpg or .jpeg")
    path.write_bytes(encode_image(rgb, fmt, quality))
