"""Overlay plot of the v1 training-curve parity run (``stargan bench parity``, device_run.sh round2).

Run on the development machine after the GPU session brought the CSV back:

    python benchmarks/plot_parity.py benchmarks/results/parity-v1-celeba.csv   # -> parity-v1-celeba.png

Each panel is one loss, one line per variant, smoothed by a centred moving average over ``--window``
steps (G losses exist on every n_critic-th step only, and are averaged over their own steps).
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

PANELS = [("D/loss", "D total"), ("D/loss_gp", "D gradient penalty"), ("D/loss_cls", "D classification (real)"),
          ("G/loss_fake", "G adversarial"), ("G/loss_rec", "G cycle reconstruction"),
          ("G/loss_cls", "G classification (fake)")]


def read(path: Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """variant -> loss -> (steps, values), empty cells skipped."""
    out: dict = defaultdict(lambda: defaultdict(lambda: ([], [])))
    with path.open() as f:
        for row in csv.DictReader(f):
            for key, _ in PANELS:
                if row.get(key):
                    steps, values = out[row["variant"]][key]
                    steps.append(int(row["step"]))
                    values.append(float(row[key]))
    return out


def smooth(values: list[float], window: int) -> list[float]:
    half = max(1, window) // 2
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


def plot(csv_path: Path, png_path: Path, window: int = 50) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read(csv_path)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for variant, losses in data.items():
            steps, values = losses[key]
            if steps:
                ax.plot(steps, smooth(values, window if key.startswith("D/") else max(1, window // 5)),
                        label=variant, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"StarGAN v1 training-curve parity: {csv_path.name} (moving average over {window} steps)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return png_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG (default: the CSV's name with .png)")
    ap.add_argument("--window", type=int, default=50)
    args = ap.parse_args()
    print(plot(args.csv, args.out or args.csv.with_suffix(".png"), args.window))


if __name__ == "__main__":
    main()
