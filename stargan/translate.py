"""Translate photos with a trained model: the library behind ``stargan translate`` and the pyfunc.

A model comes from a checkpoint (``models/train/checkpoint.pt`` or its folder), an exported
folder (``models/export``: the TorchScript graphs + ``model.json``) or the MLflow registry
(``models:/stargan@champion``); all three give the same :class:`~stargan.inference.V1Model` /
:class:`~stargan.inference.V2Model` interface. Images go through the project's one decode path
(:func:`stargan.data.imageio.decode_image`) and its face alignment
(:func:`stargan.data.align.align_face`: the Haar detector, since a user's photo has no
landmarks) with the geometry the model was trained with (``align.face_fraction``), unless the
input is an already aligned crop (``align=False``: centre square crop + resize).

Targets are names, never indices:
- v1: a target is one label name or a comma-separated combination switched on together
  (``Blond_Hair,Male``); a jointly trained model also accepts ``dataset/label`` names.
  Hair colours and one-hot classes are exclusive (the official test-time labels).
- v2: a target is one domain name; the style comes from a seed (latent-guided: z ~ N(0, I)
  drawn from ``torch.Generator().manual_seed(seed)``) or from a reference image.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from stargan.data.align import AlignedFace, AlignRejected, align_face
from stargan.data.imageio import ImageDecodeError, decode_image
from stargan.export import MODEL_JSON, load_exported
from stargan.inference import (Model, TranslateError, domain_index, load_model, need_kind, to_tensor,
                               translate_latent, translate_reference, translate_v1, v1_label)
from stargan.visualize import grid, save_png, to_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


# --------------------------------------------------------------------------------- models

def load_any(spec: str | Path, tracking_uri: str | None = None) -> Model:
    """``models:/<name>@<alias>`` / ``models:/<name>/<version>``, an exported folder, or a checkpoint."""
    spec = str(spec)
    if spec.startswith(("models:/", "runs:/")):
        from stargan.registry import RegistryError, load_registered

        try:
            return load_registered(spec, tracking_uri)
        except RegistryError as e:
            raise TranslateError(str(e)) from None
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model (give a checkpoint.pt, its folder, an exported folder "
                                "such as models/export, or models:/<name>@<alias>)")

    if path.is_dir() and (path / MODEL_JSON).exists():
        return load_exported(path)

    return load_model(path)


# --------------------------------------------------------------------------------- images

def list_inputs(path: str | Path) -> list[Path]:
    """One image file, or every image file (by suffix) directly inside a folder, sorted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise TranslateError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if not path.exists():
        raise TranslateError(f"{path}: no such file or folder")
    return [path]


@dataclass
class Prepared:
    photo: np.ndarray      # the decoded file, uint8 RGB (EXIF-rotated)
    face: AlignedFace      # the aligned crop and the photo -> crop transform
    x: Tensor              # the model input [1, 3, S, S]


def prepare(path: str | Path, model: Model, *, align: bool = True) -> Prepared:
    """Decode and align one image file (``align=False``: it is already an aligned crop)."""
    try:
        rgb = decode_image(path)
    except ImageDecodeError as e:
        raise TranslateError(f"unreadable image: {e}") from None
    a = model.config.align
    try:
        if align:
            face = align_face(rgb, model.image_size, face_fraction=a.face_fraction, min_face=a.min_face)
        else:
            face = align_face(rgb, model.image_size, crop=0)
    except AlignRejected as e:
        hint = " (pass --no-align if the image is already an aligned face crop)" if align else ""
        raise TranslateError(f"{path}: {e.reason}{hint}") from None
    return Prepared(rgb, face, to_tensor(face.image))


def paste_back(photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, feather: float = 0.15) -> np.ndarray:
    """The translated ``crop`` put back into ``photo``: warped by the inverse of the alignment
    ``matrix`` (photo -> crop pixels) and blended through a mask that is 1 inside the crop and
    fades to 0 over its outer ``feather`` fraction, so no seam shows and every pixel outside the
    crop's footprint is the photo's own."""
    h, w = photo.shape[:2]
    size = crop.shape[0]
    inv = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    back = cv2.warpAffine(crop, inv, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    edge = np.minimum(np.arange(size), np.arange(size)[::-1])        # 0 on the crop's border pixels
    ramp = np.clip(edge / max(feather * size, 1.0), 0.0, 1.0).astype(np.float32)
    mask = cv2.warpAffine(np.minimum.outer(ramp, ramp), inv, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    out = photo.astype(np.float32) * (1 - mask[..., None]) + back.astype(np.float32) * mask[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------- targets

def split_targets(texts: Sequence[str], model: Model) -> list[str]:
    """CLI ``--target`` values -> one entry per output. v1 keeps a comma list as one combined
    target; v2 makes one output per comma-separated domain."""
    out: list[str] = []
    for t in texts:
        t = t.strip()
        if not t:
            continue
        out.extend([p.strip() for p in t.split(",") if p.strip()] if model.kind == "v2" else [t])
    if not out:
        raise TranslateError(f"no target given; this model knows: {', '.join(model.target_names())}")
    return out


@dataclass
class Translated:
    input: Path
    outputs: list[Path]
    grid: Path
    method: str


@dataclass
class Skipped:
    input: Path
    reason: str        # one line: no face found, unreadable image, ...


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "+", text).strip("+")


def translate_files(model: Model, inputs: Sequence[Path], targets: Sequence[str], out_dir: str | Path, *,
                    align: bool = True, seed: int | None = None, reference: str | Path | None = None,
                    paste: bool = True) -> tuple[list[Translated], list[Skipped]]:
    """Translate every input image to every target. Writes into ``out_dir``, per photo and target,
    ``<stem>_<target>.png`` (the photo with the translated face pasted back, :func:`paste_back`;
    with ``align=False`` or ``paste=False`` the translated crop itself) and ``<stem>_<target>_crop.png``
    (the crop), and ``<stem>_grid.png`` (aligned input | outputs). A photo that cannot be used
    (no face, unreadable) is skipped with its reason and the others go on: one bad photo in a
    folder of hundreds must not cost the rest. Bad targets or a bad reference fail at once."""
    if model.kind == "v1" and (seed is not None or reference is not None):
        need_kind(model, "v2", "--reference" if reference is not None else "--seed")
    if seed is not None and reference is not None:
        raise TranslateError("give either --seed (latent-guided) or --reference (reference-guided), not both")
    targets = split_targets(targets, model)
    # Check the names before any image work, so a typo fails fast and names the choices.
    for t in targets:
        v1_label(model, t) if model.kind == "v1" else domain_index(model, t)
    ref_x = prepare(reference, model, align=align).x if reference is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, skipped = [], []
    for path in inputs:
        try:
            prep = prepare(path, model, align=align)
        except TranslateError as e:
            skipped.append(Skipped(Path(path), str(e)))
            continue
        x = prep.x
        xs = x.expand(len(targets), -1, -1, -1)
        if model.kind == "v1":
            y, method = translate_v1(model, xs, targets), "label"
        elif ref_x is not None:
            y = translate_reference(model, xs, ref_x.expand(len(targets), -1, -1, -1), targets)
            method = f"reference:{Path(reference).name}"
        else:
            s = 0 if seed is None else seed
            y, method = translate_latent(model, xs, targets, [s] * len(targets)), f"seed:{s}"
        outs = []
        for t, img in zip(targets, y):
            crop = to_uint8(img[None])[0]
            name = out_dir / f"{path.stem}_{_slug(t)}"
            if align and paste:
                outs.append(save_png(name.with_name(name.name + ".png"), paste_back(prep.photo, crop, prep.face.matrix)))
                outs.append(save_png(name.with_name(name.name + "_crop.png"), crop))
            else:
                outs.append(save_png(name.with_name(name.name + ".png"), crop))
        row = torch.cat([x, y.clamp(-1, 1)])
        g = save_png(out_dir / f"{path.stem}_grid.png", grid([row]))
        done.append(Translated(path, outs, g, method))
    return done, skipped
