"""How well can StarGAN's generator reproduce an unseen RaFD-like face at all? (issue #3 finding)

Trains the default v1 generator (``train.v1`` widths, 32 px) as a plain autoencoder — L1 only,
no GAN, no labels — and prints its L1 (in [0, 1] units) on held-out identities. A translation can
only be closer to the true counterfactual than the input is when this floor lies below the size
of the change itself (an RaFD-like expression changes 0.021 of the image, see reports/eval.json
``rafd/identity_l1``). Two training sets:

- ``shards``: the pipeline's RaFD-like shards (data/shards/rafd: 20 train identities x 8
  expressions, test = unseen identities) — run ``dvc repro shard`` first;
- ``generated N``: an RaFD-like set of N identities written by the synthetic-data writer itself
  (96 px JPEGs, then 64 -> 32 px as align and the loader do), tested on a set of 8 identities
  written with another seed.

    python benchmarks/reconstruction_floor.py shards [steps] [conv_dim] [repeat_num]
    python benchmarks/reconstruction_floor.py generated 200 [steps] [conv_dim] [repeat_num]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from stargan.config import SyntheticConfig
from stargan.data.imageio import decode_image
from stargan.data.loader import iter_split
from stargan.data.synthetic import write_rafd_like
from stargan.data.transforms import to_unit_range
from stargan.models.v1 import Generator


def _generated(identities: int, seed: int) -> torch.Tensor:
    """[identities x 8, 3, 32, 32] in [-1, 1]: the synthetic RaFD-like set at the training size."""
    with tempfile.TemporaryDirectory() as tmp:
        write_rafd_like(Path(tmp) / "rafd", SyntheticConfig(seed=seed, rafd_identities=identities))
        out = []
        for f in sorted((Path(tmp) / "rafd").glob("*/*.jpg")):
            img = cv2.resize(decode_image(f), (64, 64), interpolation=cv2.INTER_AREA)
            out.append(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA))
    return to_unit_range(torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2))


def main(argv: list[str]) -> None:
    torch.manual_seed(0)
    if argv[0] == "shards":
        train = torch.cat([b["image"] for b in iter_split("data/shards/rafd", "train", 256, 32)])
        test = torch.cat([b["image"] for b in iter_split("data/shards/rafd", "test", 256, 32)])
        rest = argv[1:]
    else:
        train, test = _generated(int(argv[1]), seed=1), _generated(8, seed=1000)
        rest = argv[2:]
    steps, conv, repeat = (int(v) for v in (rest + ["3000", "16", "2"][len(rest):]))
    G = Generator(conv, 15, repeat)
    opt = torch.optim.Adam(G.parameters(), 5e-4, betas=(0.5, 0.999))
    c = torch.zeros(16, 15)
    t0 = time.time()
    print(f"{argv[0]}: {len(train)} train / {len(test)} test images, G conv_dim {conv}, repeat_num {repeat}")
    for s in range(1, steps + 1):
        x = train[torch.randint(len(train), (16,))]
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        loss = (G(x, c) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % max(steps // 4, 1) == 0:
            with torch.no_grad():
                err = (G(test, torch.zeros(len(test), 15)) - test).abs().mean().item() / 2
            print(f"step {s}: train L1 {loss.item() / 2:.4f}, unseen-identity L1 {err:.4f} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:] or ["shards"])
