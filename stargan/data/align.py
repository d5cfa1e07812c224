"""Stage 2 — face alignment: raw images -> square, aligned RGB crops (docs/contracts.md).

Three ways to align one image, tried in this order by :func:`align_face`:

``centre_crop``  pre-aligned sets (CelebA ``img_align_celeba``, AFHQ, RaFD, CelebA-HQ): the
                 official crop — a centred ``crop`` x ``crop`` square (CelebA: 178, others:
                 the shorter side), resized to ``size`` (INTER_AREA down, bicubic up).
``landmarks``    5 points (left eye, right eye, nose, left/right mouth corner; "left" = the
                 image-left one, as in CelebA's lists): the least-squares similarity
                 (closed form, Umeyama without reflection; deterministic) onto the template.
``detector`` /   no landmarks, not pre-aligned (a user's photo): the largest Haar-cascade
``detector_box`` face; its two eyes give an exact 2-point similarity onto the template's
                 eyes, else the face box alone places the face (``detector_box``, no roll).

The template is CelebA's mean aligned geometry (img_align_celeba, 178x218: eyes (69,111) and
(108,111), nose (88,135), mouth corners (72,152) and (104,152)) made left/right symmetric,
scaled so the eye-centre-to-mouth-centre distance is ``face_fraction`` x side, centred
horizontally, with the space above the eyes and below the mouth in CelebA's proportion
(91.5 : 45.5). So ``face_fraction = 41/178 = 0.230`` reproduces the official CelebA crop, and
the default 0.45 is a tighter crop on the inner face.

Coordinates follow OpenCV: pixel *centres* sit at integer coordinates (CelebA's landmark
convention). Every result carries the 2x3 ``matrix`` mapping raw-image coordinates to aligned
coordinates; the image is ``cv2.warpAffine(raw, matrix, (size, size))`` up to resampling.
Resampling: a big shrink is an INTER_AREA pre-shrink of the needed region, then a bilinear
warp by at most 1/1.5 (measured against an 8x supersampled reference, see
:data:`WARP_OVERSAMPLE`). Outside the raw image the border is
*reflected* (``BORDER_REFLECT``): a face near the frame edge gets plausible texture instead of a
black wedge the GAN would learn to draw.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stargan.config import AlignConfig, DatasetSpec
from stargan.data.detect import detect_face
from stargan.data.formats import DatasetIndex, RawRecord
from stargan.data.imageio import ImageDecodeError, decode_image, encode_png
from stargan.errors import StarganError
from stargan.files import staged_dir, write_json
from stargan.progress import Progress

METHODS = ("landmarks", "centre_crop", "detector", "detector_box")

# CelebA mean aligned landmarks, in units of the eye-centre-to-mouth-centre distance (41 px there).
_EYE_HALF = 19.5 / 41        # half the distance between the eyes
_NOSE_DY = 24 / 41           # nose tip below the eye line
_MOUTH_HALF = 16 / 41        # half the mouth width
_ABOVE_SHARE = 91.5 / 137    # share of the free height (side - eye-to-mouth) that is above the eyes
CELEBA_OFFICIAL_CROP = 178
#: zlib level of the aligned PNGs: on 128 px CelebA crops level 1 is 2.2x faster to write than 6
#: (2.7 vs 6.0 ms; the largest cost of a centre-crop image) for 6 % more bytes (26.8 vs 25.2 KB).
PNG_LEVEL = 1
#: Box-only alignment: a Haar face box is BOX_WIDTH_D eye-to-mouth distances wide, and its centre
#: sits BOX_CY_D of them below the eye centre (measured on 189 CelebA faces, see detect.py).
#: Faces with landmarks count as BOX_WIDTH_D x eye-to-mouth px wide against ``align.min_face``.
BOX_WIDTH_D = 2.55
BOX_CY_D = 0.28
#: Warps that shrink by more than 1/WARP_OVERSAMPLE are done as an INTER_AREA shrink of the
#: needed region to WARP_OVERSAMPLE x the output scale, then a bilinear warp. Measured on 30 real
#: CelebA faces rotated 12 deg, PSNR against an 8x supersampled warp: at scale 0.26 plain bilinear
#: 33.0 dB, bicubic 31.1, pre-shrink x1.0 33.3, x1.5 41.9, x2.0 41.6; at scale 0.44: 39.1 /
#: 35.7 / 37.6 / 46.3 / 44.8 dB. Cost ~0.25 ms per 64 px face.
WARP_OVERSAMPLE = 1.5


class AlignRejected(Exception):
    """This image cannot be aligned; ``reason`` is the one-line explanation listed in report.json."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class AlignError(StarganError, RuntimeError):
    """The stage as a whole failed (e.g. every image was rejected)."""


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray     # (size, size, 3) uint8 RGB
    matrix: np.ndarray    # (2, 3) float64, raw pixel coords -> aligned pixel coords
    method: str           # one of METHODS


# ------------------------------------------------------------------------------ geometry

def template(size: int, face_fraction: float) -> np.ndarray:
    """The 5 canonical landmarks (5, 2) in pixel coordinates of a ``size`` square."""
    f = face_fraction
    ey = _ABOVE_SHARE * (1.0 - f)
    unit = np.array([[0.5 - _EYE_HALF * f, ey], [0.5 + _EYE_HALF * f, ey],
                     [0.5, ey + _NOSE_DY * f],
                     [0.5 - _MOUTH_HALF * f, ey + f], [0.5 + _MOUTH_HALF * f, ey + f]])
    return unit * size - 0.5


def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

    Closed form in complex numbers: dst ~ a * src + b, a = s * exp(i theta). Exact for 2 points.
    """
    z = src[:, 0].astype(np.float64) + 1j * src[:, 1].astype(np.float64)
    w = dst[:, 0].astype(np.float64) + 1j * dst[:, 1].astype(np.float64)
    zc, wc = z - z.mean(), w - w.mean()
    den = float(np.sum(np.abs(zc) ** 2))
    if not den > 1e-12:
        raise AlignRejected("degenerate landmarks (all points coincide)")
    a = np.sum(wc * np.conj(zc)) / den
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points with a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix, dtype=np.float64)[:, 2]


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of ``a`` applied after ``b``."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def centre_crop_matrix(width: int, height: int, crop: int, size: int) -> np.ndarray:
    """Matrix of "centre crop ``crop`` px (torchvision's rounding), resize to ``size``"."""
    x0 = int(round((width - crop) / 2.0))
    y0 = int(round((height - crop) / 2.0))
    s = size / crop
    return np.array([[s, 0.0, (0.5 - x0) * s - 0.5], [0.0, s, (0.5 - y0) * s - 0.5]])


# ------------------------------------------------------------------------------- warping

def warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine(rgb, matrix, (size, size))`` with anti-aliasing for big shrinks.

    Only the region of ``rgb`` the output needs is touched; when the warp shrinks by more than
    ``WARP_OVERSAMPLE``, that region is first shrunk with INTER_AREA (a box filter), then warped
    bilinearly, so a 500 px face becomes a 64 px one without aliasing.
    """
    h, w = rgb.shape[:2]
    m = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    inv = cv2.invertAffineTransform(m)
    corners = apply_matrix(inv, np.array([[-1, -1], [size, -1], [-1, size], [size, size]], dtype=np.float64))
    margin = 2.0 / max(scale, 1e-6) + 2
    x0 = int(np.clip(np.floor(corners[:, 0].min() - margin), 0, w - 1))
    x1 = int(np.clip(np.ceil(corners[:, 0].max() + margin) + 1, x0 + 1, w))
    y0 = int(np.clip(np.floor(corners[:, 1].min() - margin), 0, h - 1))
    y1 = int(np.clip(np.ceil(corners[:, 1].max() + margin) + 1, y0 + 1, h))
    # Reflection at the region's edge equals reflection at the image's edge only where they
    # coincide, so keep the whole image whenever the output reaches beyond it.
    if (corners[:, 0].min() - margin < 0 or corners[:, 0].max() + margin > w - 1
            or corners[:, 1].min() - margin < 0 or corners[:, 1].max() + margin > h - 1):
        x0, x1, y0, y1 = 0, w, 0, h
    roi = rgb[y0:y1, x0:x1]
    m = _compose(m, np.array([[1.0, 0, x0], [0, 1.0, y0]]))
    shrink = scale * WARP_OVERSAMPLE
    if shrink < 1.0:
        rw, rh = roi.shape[1], roi.shape[0]
        nw, nh = max(1, int(round(rw * shrink))), max(1, int(round(rh * shrink)))
        roi = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / rw, nh / rh
        up = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5]])   # small -> roi coords
        m = _compose(m, up)
    return cv2.warpAffine(roi, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# ---------------------------------------------------------------------------- one image

def _check_landmarks(lm: np.ndarray, width: int, height: int, min_face: int) -> np.ndarray:
    lm = np.asarray(lm, dtype=np.float64)
    if lm.shape != (5, 2):
        raise AlignRejected(f"landmarks have shape {lm.shape}; expected (5, 2)")
    if not np.all(np.isfinite(lm)):
        raise AlignRejected("landmarks are not finite numbers")
    bad = [(float(x), float(y)) for x, y in lm if not (0 <= x <= width - 1 and 0 <= y <= height - 1)]
    if bad:
        raise AlignRejected(f"landmarks outside the image: {bad[0]} not in {width}x{height}")
    d = float(np.linalg.norm((lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2))
    if BOX_WIDTH_D * d < min_face:
        raise AlignRejected(f"face too small: ~{BOX_WIDTH_D * d:.0f} px wide < align.min_face {min_face}")
    eyes = lm[1] - lm[0]
    down = (lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2
    if eyes[0] * down[1] - eyes[1] * down[0] <= 0:
        raise AlignRejected("landmarks are mirrored or collinear (left/right eye swapped?)")
    return lm


def _box_matrix(box: tuple[float, float, float, float], size: int, face_fraction: float) -> np.ndarray:
    x, y, w, _ = box
    d = w / BOX_WIDTH_D
    eye_c = np.array([x + w / 2 - 0.5, y + w / 2 - 0.5 - BOX_CY_D * d])
    tpl = template(size, face_fraction)
    s = face_fraction * size / d
    t = (tpl[0] + tpl[1]) / 2 - s * eye_c
    return np.array([[s, 0.0, t[0]], [0.0, s, t[1]]])


def align_face(rgb: np.ndarray, size: int, landmarks: np.ndarray | None = None, face_fraction: float = 0.45,
               crop: int | None = None, *, min_face: int = 24) -> AlignedFace:
    """Align one RGB uint8 image to a ``size`` square.

    ``crop`` not None: pre-aligned image, centre crop of ``crop`` px (0 = the shorter side).
    Else ``landmarks`` (5, 2) when given, else the face detector (faces under ``min_face`` px
    are ignored). Raises :class:`AlignRejected` with the reason when it cannot.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"align_face expects an RGB uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if crop is not None:
        c = int(crop) or min(w, h)
        if c > min(w, h):
            raise AlignRejected(f"image {w}x{h} is smaller than the {c} px centre crop")
        m = centre_crop_matrix(w, h, c, size)
        x0, y0 = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
        patch = rgb[y0:y0 + c, x0:x0 + c]
        interp = cv2.INTER_AREA if size < c else cv2.INTER_CUBIC
        img = patch.copy() if size == c else cv2.resize(patch, (size, size), interpolation=interp)
        return AlignedFace(np.ascontiguousarray(img), m, "centre_crop")
    if landmarks is not None:
        lm = _check_landmarks(landmarks, w, h, min_face)
        m = similarity_lstsq(lm, template(size, face_fraction))
        return AlignedFace(warp(rgb, m, size), m, "landmarks")
    det = detect_face(rgb, min_face=min_face)
    if det is None:
        raise AlignRejected("no face found")
    if det.eyes is not None:
        m = similarity_lstsq(det.eyes, template(size, face_fraction)[:2])
        method = "detector"
    else:
        m = _box_matrix(det.box, size, face_fraction)
        method = "detector_box"
    return AlignedFace(warp(rgb, m, size), m, method)


# ------------------------------------------------------------------------------- dataset

def image_file(key: str) -> str:
    """``images/<key with "/" -> "__", suffix .png>``."""
    return "images/" + str(Path(key.replace("/", "__")).with_suffix(".png"))


def official_crop(spec: DatasetSpec, layout: str) -> int:
    """``spec.crop``, or the layout's official one: CelebA 178, others the shorter side (0)."""
    if spec.crop:
        return spec.crop
    return CELEBA_OFFICIAL_CROP if layout == "celeba" else 0


def _align_task(task: dict) -> dict:
    """Worker: decode, align, write the PNG; never raises for a bad image."""
    key = task["key"]
    try:
        rgb = decode_image(task["path"])
        crop = task["crop"]
        if crop is not None and crop > min(rgb.shape[:2]) and task["crop_is_default"]:
            crop = 0        # an image smaller than CelebA's 178: its shorter side
        lm = None if task["landmarks"] is None else np.asarray(task["landmarks"], dtype=np.float64)
        out = align_face(rgb, task["size"], lm, task["face_fraction"], crop, min_face=task["min_face"])
    except ImageDecodeError as e:
        return {"key": key, "reason": f"unreadable: {e}"}
    except AlignRejected as e:
        return {"key": key, "reason": e.reason}
    except Exception as e:  # noqa: BLE001 - one bad image must never stop the stage
        return {"key": key, "reason": f"error: {type(e).__name__}: {e}"}
    Path(task["out"]).write_bytes(encode_png(out.image, compress_level=PNG_LEVEL))
    matrix = [[round(float(v), 10) + 0.0 for v in row] for row in out.matrix]
    return {"key": key, "matrix": matrix, "method": out.method}


def _align_chunk(tasks: list[dict]) -> list[dict]:
    return [_align_task(t) for t in tasks]


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _run(tasks: list[dict], workers: int, name: str) -> list[dict]:
    chunk = max(1, min(32, -(-len(tasks) // (4 * max(workers, 1)))))   # >= 4 chunks per worker
    chunks = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
    progress = Progress(f"align {name}", len(tasks), "images")
    results: list[dict] = []

    def update(part: list[dict]) -> None:
        results.extend(part)
        progress.update(len(results), f"{sum('reason' in r for r in results)} rejected")

    if workers <= 1 or len(chunks) <= 1:
        prev = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for c in chunks:
                update(_align_chunk(c))
        finally:
            cv2.setNumThreads(prev)
        return results
    # fork where there is one: a spawned worker re-runs the caller's main module, which breaks
    # (recursively) any script without an ``if __name__ == "__main__"`` guard. The workers only
    # run OpenCV/Pillow, single-threaded (_worker_init), so torch threads in the parent are harmless.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(min(workers, len(chunks)), initializer=_worker_init) as pool:
        for part in pool.imap(_align_chunk, chunks):     # imap keeps the input order
            update(part)
    return results


def align_dataset(index: DatasetIndex, out_dir: Path, cfg: AlignConfig, spec: DatasetSpec,
                  workers: int | None = None) -> dict:
    """Align every record of ``index`` into ``out_dir`` (images/, index.jsonl, meta.json, report.json).

    Returns the report (as written to report.json) plus timing: ``seconds``, ``images_per_s``,
    ``workers``. Raises :class:`AlignError` when no image could be aligned. The folder is built
    beside ``out_dir`` and renamed over it at the end, so a crash never leaves a half folder.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    workers = cfg.workers if workers is None else workers
    records = sorted(index.records, key=lambda r: r.key)
    if not records:
        raise AlignError(f"{index.name}: the raw dataset has no images")
    crop = official_crop(spec, index.layout) if spec.aligned else None
    with staged_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        tasks, early, seen = [], {}, {}
        for r in records:
            fname = image_file(r.key)
            if fname in seen:
                early[r.key] = f"output file {fname} collides with that of {seen[fname]}; rename one"
                continue
            seen[fname] = r.key
            tasks.append({"key": r.key, "path": str(r.path), "out": str(tmp / fname), "size": cfg.image_size,
                          "face_fraction": cfg.face_fraction, "min_face": cfg.min_face, "crop": crop,
                          "crop_is_default": spec.aligned and not spec.crop and index.layout == "celeba",
                          "landmarks": None if r.landmarks is None else np.asarray(r.landmarks).tolist()})
        done = {res["key"]: res for res in _run(tasks, workers, index.name)}
        done.update({k: {"key": k, "reason": v} for k, v in early.items()})
        report = _write_outputs(tmp, index, records, done, cfg)
        if report["accepted"] == 0:
            first = report["rejected"][0]
            raise AlignError(f"{index.name}: all {report['total']} images were rejected "
                             f"(first: {first['key']}: {first['reason']}); nothing to align")
        seconds = time.perf_counter() - t0      # the work, not the removal of a previous output
    return {**report, "seconds": round(seconds, 3), "images_per_s": round(len(records) / max(seconds, 1e-9), 1),
            "workers": workers}


def _write_outputs(tmp: Path, index: DatasetIndex, records: list[RawRecord], done: dict, cfg: AlignConfig) -> dict:
    rows, rejected = [], []
    methods: dict[str, int] = {}
    per_split: dict[str, int] = {}
    for r in records:
        res = done[r.key]
        if "reason" in res:
            rejected.append({"key": r.key, "path": str(r.path), "reason": res["reason"]})
            continue
        methods[res["method"]] = methods.get(res["method"], 0) + 1
        per_split[r.split] = per_split.get(r.split, 0) + 1
        rows.append({"key": r.key, "file": image_file(r.key), "labels": [int(v) for v in r.labels],
                     "split": r.split, "identity": int(r.identity), "matrix": res["matrix"],
                     "method": res["method"], "extra": r.extra or {}})
    with open(tmp / "index.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    counts = {"total": len(records), "accepted": len(rows), "rejected": len(rejected),
              "per_split": dict(sorted(per_split.items()))}
    write_json(tmp / "meta.json", {"name": index.name, "layout": index.layout, "label_names": list(index.label_names),
                                    "label_kind": index.label_kind, "image_size": cfg.image_size, "counts": counts})
    report = {"total": len(records), "accepted": len(rows), "rejected": rejected,
              "methods": dict(sorted(methods.items()))}
    write_json(tmp / "report.json", report)
    return report


def bench_align(index: DatasetIndex, cfg: AlignConfig, spec: DatasetSpec, workers: tuple[int, ...] = (1, 2),
                limit: int | None = None, scratch: Path | None = None) -> dict:
    """Images/s of :func:`align_dataset` at each worker count (outputs go to a scratch folder).

    ``limit`` keeps the first N records (by key). Returns ``{"images", "runs": [{"workers",
    "seconds", "images_per_s", "accepted"}]}``.
    """
    import tempfile

    records = sorted(index.records, key=lambda r: r.key)[:limit] if limit else list(index.records)
    sub = DatasetIndex(index.name, index.layout, index.label_names, index.label_kind, records)
    runs = []
    with tempfile.TemporaryDirectory(dir=scratch) as d:
        for n in workers:
            rep = align_dataset(sub, Path(d) / f"w{n}", cfg, spec, workers=n)
            runs.append({"workers": n, "seconds": rep["seconds"], "images_per_s": rep["images_per_s"],
                         "accepted": rep["accepted"]})
    return {"images": len(records), "runs": runs}
