"""DVC stage `align`: data/raw/<name>/ -> data/aligned/<name>/ for every dataset in data.datasets.

    python pipelines/align.py [--params params.yaml]

Reads params `data` and `align`. Every rejected file is listed with its reason in
data/aligned/<name>/report.json; the stage fails only when a dataset has no usable image.
"""
from __future__ import annotations

import sys
from pathlib import Path

from stargan.data.align import align_dataset
from stargan.data.formats import DataFormatError, read_dataset
from stargan.stage import run_stage


def main(cfg, root: Path) -> None:
    data = root / cfg.data.root
    for name, spec in cfg.data.datasets.items():
        raw = data / "raw" / name
        if not raw.exists():
            raise DataFormatError(f"{raw}: missing; run the download stage first (dvc repro download)")
        index = read_dataset(raw, spec.layout, spec.attributes, name, spec.missing)
        out = data / "aligned" / name
        rep = align_dataset(index, out, cfg.align, spec)
        print(f"[align] {name}: {rep['accepted']} accepted, {len(rep['rejected'])} rejected of {rep['total']} "
              f"({rep['seconds']:.1f} s, {rep['images_per_s']:.0f} img/s, {rep['workers']} workers) "
              f"-> {out / 'report.json'}")


if __name__ == "__main__":
    sys.exit(run_stage("align", main))
