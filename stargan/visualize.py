"""Image grids for samples and reports, without torchvision: a grid is a few lines of tensor
reshaping, and keeping it here keeps the one encode path (``stargan.data.imageio``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1,1] float [N,3,H,W] -> uint8 [N,H,W,3]."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(rows: list[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Stack rows of equally sized image batches ([N,3,H,W] each) into one uint8 RGB image.

    Row r, column c holds ``rows[r][c]``; typically each row is one source image followed by
    its translations, so a grid reads "source | target 1 | target 2 ...".
    """
    imgs = [to_uint8(r) for r in rows]
    n_cols = max(len(r) for r in imgs)
    h, w = imgs[0].shape[1:3]
    out = np.full((len(imgs) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(imgs):
        for j, im in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = im
    return out


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Atomic PNG write (temp file + rename)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)
    return path
