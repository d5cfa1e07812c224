"""Writing the synthetic sets to disk in the real CelebA and RaFD layouts.

A set is built in a hidden staging folder next to ``root`` and renamed into place only when
complete (replacing an older ``root``), so an interrupted run never leaves a half dataset that
looks whole. Output bytes depend only on the :class:`SyntheticConfig`.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from stargan.config import SyntheticConfig
from stargan.data.imageio import encode_jpeg
from stargan.data.synthetic.face import (CELEBA_LIST_ATTRIBUTES, HAIR_COLOURS, RAFD_EXPRESSIONS, FaceParams,
                                         celeba_labels, sample_traits, sample_wild_pose, studio_pose)
from stargan.data.synthetic.render import render
from stargan.files import staged_dir

IMAGES_PER_IDENTITY = 4
JPEG_QUALITY = 95
PARAMS_FILE = "list_synthetic_params.jsonl"
LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                   "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")


def _render_jpeg(p: FaceParams, size: int) -> tuple[bytes, np.ndarray]:
    rgb, lm = render(p, size)
    return encode_jpeg(rgb, JPEG_QUALITY), lm


def _render_all(faces: Sequence[FaceParams], size: int) -> list[tuple[bytes, np.ndarray]]:
    """JPEG bytes and landmarks of every face, drawn on every core (drawing is most of the
    download stage's time on the default). Each image is a pure function of its parameters, so
    the bytes do not depend on how many processes drew them."""
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(faces) < 64:
        return [_render_jpeg(p, size) for p in faces]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_render_jpeg, faces, [size] * len(faces), chunksize=32))


def _write_params(path: Path, rows: list[tuple[str, FaceParams]]) -> None:
    with open(path, "w") as f:
        for key, p in rows:
            f.write(json.dumps({"key": key, "params": p.to_dict()}, sort_keys=True) + "\n")


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Identities for (val, test): rounded shares, at least one each when asked for and possible."""
    val, test = round(n * val_fraction), round(n * test_fraction)
    if test_fraction > 0 and test == 0 and n >= 2:
        test = 1
    if val_fraction > 0 and val == 0 and n - test >= 2:
        val = 1
    return val, test


def _celeba_faces(cfg: SyntheticConfig) -> list[tuple[FaceParams, int]]:
    """(params, partition 0/1/2) per image, ordered train, val, test like real CelebA."""
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.celeba_images
    n_id = max(1, round(n / IMAGES_PER_IDENTITY))
    people = []
    for i in range(n_id):
        people.append(dict(traits=sample_traits(rng), male=bool(rng.random() < 0.45),
                           hair=HAIR_COLOURS[int(rng.integers(3))], young=bool(rng.random() < 0.7),
                           glasses=float(rng.choice([0.05, 0.4], p=[0.8, 0.2]))))
    n_val, n_test = _split_counts(n_id, cfg.val_fraction, cfg.test_fraction)
    order = rng.permutation(n_id)
    part = np.zeros(n_id, int)
    part[order[:n_test]] = 2
    part[order[n_test:n_test + n_val]] = 1
    owner = rng.permutation(np.arange(n) % n_id)
    owner = owner[np.argsort(part[owner], kind="stable")]     # train, then val, then test images
    faces = []
    for ident in owner:
        who = people[ident]
        hair = who["hair"] if rng.random() < 0.7 else HAIR_COLOURS[int(rng.integers(3))]
        young = who["young"] if rng.random() < 0.85 else not who["young"]
        p = FaceParams(identity=int(ident) + 1, **who["traits"], **sample_wild_pose(rng, cfg.clutter), hair=hair,
                       male=who["male"], young=young, eyeglasses=bool(rng.random() < who["glasses"]),
                       expression="happy" if rng.random() < cfg.celeba_smiling else "neutral")
        faces.append((p, int(part[ident])))
    return faces


def write_celeba_like(root: Path, cfg: SyntheticConfig) -> None:
    """``img_celeba/*.jpg`` + CelebA's list files (+ the render parameters) under ``root``."""
    faces = _celeba_faces(cfg)
    names = [f"{i:06d}.jpg" for i in range(1, len(faces) + 1)]
    with staged_dir(root) as tmp:
        (tmp / "img_celeba").mkdir()
        attr_rows, lm_rows = [], []
        drawn = _render_all([p for p, _ in faces], cfg.image_size)
        for name, (p, _), (jpeg, lm) in zip(names, faces, drawn):
            (tmp / "img_celeba" / name).write_bytes(jpeg)
            attr_rows.append(name + " " + " ".join(f"{2 * v - 1:2d}" for v in celeba_labels(p)))
            lm_rows.append(name + " " + " ".join(f"{int(v):4d}" for v in np.round(lm).reshape(-1)))
        count = str(len(names))
        (tmp / "list_attr_celeba.txt").write_text(
            "\n".join([count, " ".join(CELEBA_LIST_ATTRIBUTES)] + attr_rows) + "\n")
        (tmp / "list_landmarks_celeba.txt").write_text("\n".join([count, LANDMARK_HEADER] + lm_rows) + "\n")
        (tmp / "list_eval_partition.txt").write_text(
            "".join(f"{n} {part}\n" for n, (_, part) in zip(names, faces)))
        (tmp / "identity_CelebA.txt").write_text("".join(f"{n} {p.identity}\n" for n, (p, _) in zip(names, faces)))
        _write_params(tmp / PARAMS_FILE, [(n, p) for n, (p, _) in zip(names, faces)])


def rafd_filename(identity: int, male: bool, expression: str) -> str:
    return f"Rafd090_{identity:02d}_Synthetic_{'male' if male else 'female'}_{expression}_frontal.jpg"


def write_rafd_like(root: Path, cfg: SyntheticConfig) -> None:
    """``<expression>/Rafd090_<id>_Synthetic_<gender>_<expression>_frontal.jpg`` for every identity
    in all 8 expressions (+ the render parameters) under ``root``."""
    rng = np.random.default_rng([cfg.seed, 2])
    people = []
    for ident in range(1, cfg.rafd_identities + 1):
        people.append(dict(identity=ident, **sample_traits(rng), male=bool(ident % 2),
                           hair=HAIR_COLOURS[int(rng.integers(3))], young=bool(rng.random() < 0.75)))
    rows = []
    for expression in RAFD_EXPRESSIONS:
        for who in people:
            p = FaceParams(**{**who, "clothes": (28, 28, 30)}, **studio_pose(), eyeglasses=False,
                           expression=expression)
            rows.append((f"{expression}/{rafd_filename(p.identity, p.male, expression)}", p))
    with staged_dir(root) as tmp:
        for expression in RAFD_EXPRESSIONS:
            (tmp / expression).mkdir()
        for (key, _), (jpeg, _) in zip(rows, _render_all([p for _, p in rows], cfg.image_size)):
            (tmp / key).write_bytes(jpeg)
        _write_params(tmp / PARAMS_FILE, rows)
