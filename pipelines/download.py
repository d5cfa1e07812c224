"""DVC stage `download`: every dataset of params -> data/raw/<name>/ + SOURCE.json.

Reads params `data`, `synthetic`, `download`. Each dataset is generated (source: synthetic),
downloaded from its official URL (celeba, celeba_hq, afhq, afhq_v2; resumable, checksummed) or
taken from a local folder/archive (rafd, local). The library parses each with its layout's reader
before it replaces data/raw/<name>, so a broken dataset fails here, with the user's file and the
fix named, rather than two stages later; this script reports what came out.

    python pipelines/download.py [--params params.yaml] [-S data.datasets.celeba.source=local ...]
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from stargan.stage import run_stage


def describe(index) -> str:
    """'1200 images; splits train 1020, val 60, test 120; positives Male 600, ...'."""
    splits = Counter(r.split or "unassigned" for r in index.records)
    per_label = [sum(r.labels[i] for r in index.records) for i in range(len(index.label_names))]
    kind = "positives" if index.label_kind == "multi" else "per class"
    return (f"{len(index.records)} images; splits " + ", ".join(f"{s} {n}" for s, n in sorted(splits.items()))
            + f"; {kind} " + ", ".join(f"{name} {n}" for name, n in zip(index.label_names, per_label)))


def main(cfg, root: Path) -> None:
    from stargan.data.download import fetch_all
    from stargan.data.formats import first_names

    for name, res in fetch_all(cfg, base_dir=root).items():
        index = res["index"]
        print(f"[download] {name}: {res['status']}, {res['source']} ({res['layout']} layout), "
              f"{res['bytes'] / 2**20:.1f} MiB, sha256 {res['sha256'][:12]}...: {describe(index)}")
        if index.skipped:
            print(f"[download] {name}: left out {len(index.skipped)} listed image(s) that are not in the source "
                  f"(missing: skip): {first_names(index.skipped)}; recorded in {Path(res['root']) / 'SOURCE.json'}")


if __name__ == "__main__":
    sys.exit(run_stage("download", main))
