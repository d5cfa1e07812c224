"""Parsers for the raw datasets' own on-disk formats.

The synthetic generator writes these same formats, so the code below is exercised on every
``dvc repro`` and reads real CelebA / RaFD / AFHQ folders unchanged. Every problem (missing
file, malformed row, unknown attribute) raises :class:`DataFormatError` naming the file, the
line and the fix; nothing is skipped silently. The one exception is asked for by name: with
``missing="skip"`` (``data.datasets.<name>.missing``) the celeba layout leaves out listed images
that are absent from the image folder, and lists their keys in :attr:`DatasetIndex.skipped` so the
caller reports them.

Layouts
-------
``celeba``  ``img_celeba/`` or ``img_align_celeba/`` + ``list_attr_celeba.txt`` (+ optional
            ``list_landmarks_celeba.txt`` / ``list_landmarks_align_celeba.txt``,
            ``list_eval_partition.txt``, ``identity_CelebA.txt``, and, for the synthetic set
            only, ``list_synthetic_params.jsonl`` with the render parameters).
``rafd``    ``<root>/[train|test/]<expression>/*.jpg``; one-hot labels from folder names.
``folders`` ``<root>/<train|val|test>/<domain>/*`` (AFHQ, CelebA-HQ, any user folder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stargan.errors import StarganError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_NAMES = {0: "train", 1: "val", 2: "test"}
RAFD_EXPRESSIONS = ("angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")
CELEBA_LANDMARK_FILES = ("list_landmarks_celeba.txt", "list_landmarks_align_celeba.txt")


class DataFormatError(StarganError, ValueError):
    """Raw data that does not match its declared layout."""


def first_names(names: list[str], n: int = 5) -> str:
    """'a, b, c, ...': enough names to find the problem without flooding the line."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


class MissingImagesError(DataFormatError):
    """Images the list files name that are not in the image folder (``missing: error``); the
    fields let the download stage give advice that fits where the files came from."""

    def __init__(self, img_dir: Path, absent: list[str], listed: int, list_file: Path, name: str):
        self.img_dir, self.absent, self.listed, self.list_file = img_dir, absent, listed, list_file
        super().__init__(f"{img_dir}: {len(absent)} of the {listed} images listed in {list_file.name} are "
                         f"missing ({first_names(absent)}); add them, or set data.datasets.{name}.missing: "
                         "skip to leave them out")


@dataclass(frozen=True)
class RawRecord:
    key: str                       # unique within the dataset, stable across runs ("000001.jpg", "angry/x.jpg")
    path: Path                     # the image file
    labels: tuple[int, ...]        # aligned with DatasetIndex.label_names; 0/1 (multi) or one-hot
    split: str                     # "train" | "val" | "test" | "" (unassigned: the shard stage assigns)
    landmarks: np.ndarray | None = None   # (5, 2) float32: left eye, right eye, nose, left/right mouth
    identity: int = -1
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class DatasetIndex:
    name: str
    layout: str
    label_names: list[str]
    label_kind: str                # "multi" (independent binary attributes) | "onehot" (one class)
    records: list[RawRecord]
    skipped: list[str] = field(default_factory=list)   # listed keys left out under missing: skip


def _lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataFormatError(f"{path}: missing. The CelebA layout needs this file next to the image folder.")
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def _read_table(path: Path, n_values: int | None, header: bool) -> tuple[list[str], dict[str, list[str]]]:
    """Read a CelebA list file: optional count line, optional header line, then ``file v1 v2 ...``."""
    lines = _lines(path)
    names: list[str] = []
    start = 0
    if header:
        if len(lines) < 2:
            raise DataFormatError(f"{path}: expected a count line and a header line, found {len(lines)} line(s)")
        names = lines[1].split()
        start = 2
        n_values = len(names)
    rows: dict[str, list[str]] = {}
    for i, line in enumerate(lines[start:], start=start + 1):
        parts = line.split()
        if len(parts) != 1 + n_values:
            raise DataFormatError(f"{path}:{i}: expected a file name and {n_values} values, "
                                  f"found {len(parts) - 1} value(s): {line[:80]!r}")
        if parts[0] in rows:
            raise DataFormatError(f"{path}:{i}: duplicate row for {parts[0]}")
        rows[parts[0]] = parts[1:]
    return names, rows


def _image_dir(root: Path) -> Path:
    for name in ("img_celeba", "img_align_celeba", "images"):
        if (root / name).is_dir():
            return root / name
    raise DataFormatError(f"{root}: no image folder (or an empty one); the CelebA layout expects the images "
                          "in img_celeba/ or img_align_celeba/")


def read_celeba(root: Path, attributes: list[str], name: str = "celeba", missing: str = "error") -> DatasetIndex:
    """CelebA's list files -> records with the selected attributes as 0/1 labels.

    An image on disk without a label row is always an error (its labels are unknown). A listed
    image that is absent is an error with ``missing="error"``; with ``"skip"`` (a partial copy
    of CelebA: the official lists, fewer images) it is left out and named in ``skipped``."""
    root = Path(root)
    img_dir = _image_dir(root)
    attr_path = root / "list_attr_celeba.txt"
    all_names, attr_rows = _read_table(attr_path, None, header=True)
    if not attributes:
        raise DataFormatError(f"{name}: the celeba layout needs data.datasets.{name}.attributes, "
                              f"e.g. [Black_Hair, Blond_Hair, Brown_Hair, Male, Young]; "
                              f"{attr_path.name} has: {', '.join(all_names)}")
    unknown = [a for a in attributes if a not in all_names]
    if unknown:
        raise DataFormatError(f"data.datasets.{name}.attributes: {', '.join(unknown)} not in {attr_path}; "
                              f"available: {', '.join(all_names)}")
    cols = [all_names.index(a) for a in attributes]

    landmarks: dict[str, list[str]] = {}
    for fname in CELEBA_LANDMARK_FILES:
        if (root / fname).exists():
            _, landmarks = _read_table(root / fname, None, header=True)
            break
    partition: dict[str, list[str]] = {}
    if (root / "list_eval_partition.txt").exists():
        _, partition = _read_table(root / "list_eval_partition.txt", 1, header=False)
    identity: dict[str, list[str]] = {}
    if (root / "identity_CelebA.txt").exists():
        _, identity = _read_table(root / "identity_CelebA.txt", 1, header=False)
    extra: dict[str, dict] = {}
    params_path = root / "list_synthetic_params.jsonl"
    if params_path.exists():
        for i, line in enumerate(params_path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    extra[row["key"]] = row["params"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise DataFormatError(f"{params_path}:{i}: malformed row ({e})") from None

    on_disk = {p.name for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    records = []
    for i, (fname, values) in enumerate(sorted(attr_rows.items())):
        try:
            labels = tuple(_attr_value(values[c]) for c in cols)
        except ValueError as e:
            raise DataFormatError(f"{attr_path}: row {fname}: {e}") from None
        lm = None
        if landmarks:
            if fname not in landmarks:
                raise DataFormatError(f"{root}: {fname} has attributes but no landmark row; "
                                      "add it or remove the landmark file to centre-crop instead")
            try:
                lm = np.asarray([float(v) for v in landmarks[fname]], dtype=np.float32).reshape(5, 2)
            except ValueError:
                raise DataFormatError(f"{root}: landmark row for {fname} is not numeric") from None
        split = ""
        if partition:
            if fname not in partition:
                raise DataFormatError(f"{root / 'list_eval_partition.txt'}: no row for {fname}")
            part = partition[fname][0]
            if part not in ("0", "1", "2"):
                raise DataFormatError(f"{root / 'list_eval_partition.txt'}: {fname} has partition {part!r}; expected 0, 1 or 2")
            split = SPLIT_NAMES[int(part)]
        ident = int(identity[fname][0]) if fname in identity else -1
        records.append(RawRecord(key=fname, path=img_dir / fname, labels=labels, split=split,
                                 landmarks=lm, identity=ident, extra=extra.get(fname, {})))
    labelled = {r.key for r in records}
    unlabelled = sorted(on_disk - labelled)
    if unlabelled:
        raise DataFormatError(f"{img_dir}: {len(unlabelled)} image(s) have no row in {attr_path.name} "
                              f"(first: {unlabelled[0]}); add their labels or remove them")
    absent = sorted(labelled - on_disk)
    if absent and missing != "skip":
        raise MissingImagesError(img_dir, absent, len(labelled), attr_path, name)
    if absent and len(absent) == len(labelled):
        raise DataFormatError(f"{img_dir}: none of the {len(labelled)} images listed in {attr_path.name} is "
                              f"there ({first_names(absent)}), so missing: skip leaves no image; put the "
                              "images in this folder")
    records = [r for r in records if r.key in on_disk]
    return DatasetIndex(name=name, layout="celeba", label_names=list(attributes), label_kind="multi",
                        records=records, skipped=absent)


def _attr_value(v: str) -> int:
    if v == "1":
        return 1
    if v in ("-1", "0"):
        return 0
    raise ValueError(f"attribute value {v!r}; expected 1 or -1")


def _scan_class_folders(root: Path, classes: list[str], layout: str, name: str,
                        split: str) -> list[RawRecord]:
    records = []
    for ci, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                rel = p.relative_to(root.parent if split else root).as_posix()
                onehot = tuple(1 if j == ci else 0 for j in range(len(classes)))
                records.append(RawRecord(key=rel, path=p, labels=onehot, split=split))
    return records


def _classes_in(dirs: list[Path]) -> list[str]:
    return sorted({c.name for d in dirs if d.is_dir() for c in d.iterdir() if c.is_dir()})


def read_class_folders(root: Path, classes: list[str], layout: str, name: str) -> DatasetIndex:
    """RaFD (``[split/]<expression>/``) and folders (``<split>/<domain>/``) layouts."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: not a folder")
    split_dirs = [root / s for s in ("train", "val", "test") if (root / s).is_dir()]
    if layout == "folders" and not split_dirs:
        raise DataFormatError(f"{root}: the folders layout expects <split>/<domain>/ sub-folders "
                              "(train/, val/ or test/), e.g. afhq/train/cat/")
    found = _classes_in(split_dirs) if split_dirs else sorted(c.name for c in root.iterdir() if c.is_dir())
    if not classes:
        classes = found
    unknown = [c for c in classes if c not in found]
    if unknown:
        raise DataFormatError(f"data.datasets.{name}.attributes: {', '.join(unknown)} not found under {root}; "
                              f"classes present: {', '.join(found) or '(none)'}")
    if not classes:
        raise DataFormatError(f"{root}: no class folders found")
    records: list[RawRecord] = []
    if split_dirs:
        for d in split_dirs:
            records += _scan_class_folders(d, classes, layout, name, split=d.name)
    else:
        records = _scan_class_folders(root, classes, layout, name, split="")
    if not records:
        raise DataFormatError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    params_path = root / "list_synthetic_params.jsonl"
    if params_path.exists():
        extra = {}
        for line in params_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                extra[row["key"]] = row["params"]
        records = [RawRecord(r.key, r.path, r.labels, r.split, r.landmarks, extra.get(r.key, {}).get("identity", -1),
                             extra.get(r.key, {})) for r in records]
    return DatasetIndex(name=name, layout=layout, label_names=list(classes), label_kind="onehot", records=records)


def read_dataset(root: Path, layout: str, attributes: list[str], name: str,
                 missing: str = "error") -> DatasetIndex:
    """Dispatch on the layout name from params (``data.datasets.<name>.layout``). ``missing``
    (``data.datasets.<name>.missing``) only matters for celeba: in rafd/folders the images on
    disk are the listing, so none can be missing."""
    if layout == "celeba":
        return read_celeba(root, attributes, name, missing)
    if layout in ("rafd", "folders"):
        return read_class_folders(root, attributes, layout, name)
    raise DataFormatError(f"data.datasets.{name}.layout: unknown layout {layout!r}; use celeba, rafd or folders")
