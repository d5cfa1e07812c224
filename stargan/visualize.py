"""Image grids for samples and reports, without torchvision: a grid is a few lines of tensor
reshaping, and keeping it here keeps the one encode path (``stargan.data.imageio``)."""
from __future__ import annotations

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


def labelled_grid(rows: list[torch.Tensor], columns: list[str], scale: int = 4, pad: int = 2) -> np.ndarray:
    """:func:`grid` with every tile enlarged ``scale`` times (nearest neighbour: the pixels the
    model made, only bigger) under a header naming each column (``columns[c]``: "input",
    "Blond_Hair", ...). A 32-px tile is too small to judge at its native size."""
    from PIL import Image, ImageDraw, ImageFont

    imgs = [to_uint8(r).repeat(scale, axis=1).repeat(scale, axis=2) for r in rows]
    body = grid([torch.from_numpy(np.ascontiguousarray(i)).permute(0, 3, 1, 2).float() / 127.5 - 1 for i in imgs],
                pad)
    w = imgs[0].shape[2]
    font = ImageFont.load_default()
    header = Image.new("RGB", (body.shape[1], 14 * 2 + pad), "white")
    draw = ImageDraw.Draw(header)
    for j, text in enumerate(columns[:max(len(r) for r in imgs)]):
        lines = _wrap(text, draw, font, w)
        for k, line in enumerate(lines[:2]):
            draw.text((pad + j * (w + pad) + 2, pad + 14 * k), line, fill="black", font=font)
    return np.concatenate([np.asarray(header), body])


def _wrap(text: str, draw, font, width: int) -> list[str]:
    """Split a label at '/' or '_' (else anywhere) into lines that fit ``width`` pixels."""
    lines, cur = [], ""
    for ch in text:
        if draw.textlength(cur + ch, font=font) > width - 4:
            cut = max(cur.rfind("/"), cur.rfind("_"))
            lines.append(cur[:cut + 1] if cut > 0 else cur)
            cur = (cur[cut + 1:] if cut > 0 else "") + ch
        else:
            cur += ch
    return lines + [cur]


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Atomic PNG write, readable like any file the user writes."""
    import cv2

    from stargan.files import write_bytes

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    return write_bytes(path, buf.tobytes())
