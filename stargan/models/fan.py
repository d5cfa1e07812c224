"""The FAN face-landmark network whose heatmaps make StarGAN v2's high-pass masks (``w_hpf > 0``).

Architecture: one hourglass stack of AdaptiveWingLoss's FAN (Wang et al., ICCV 2019;
protossw512/AdaptiveWingLoss, Apache-2.0), written here from that description: a 7x7 stride-2
coord-conv stem, three bottleneck ConvBlocks, one depth-4 hourglass whose input goes through a
1x1 coord-conv, a ConvBlock, 1x1 conv + BatchNorm + ReLU, and a 1x1 head with
``num_landmarks + 1`` channels: 98 WFLW landmark heatmaps plus the boundary heatmap, at 64x64 for
a 256x256 input. With ``num_landmarks=98`` this is 6,333,603 parameters, the FAN count in the
official StarGAN v2 training log (the variant whose head has the extra boundary channel), and the
module names are those of AdaptiveWingLoss (``conv1.conv``, ``m0.coordconv.conv``, ``m0.b1_4``,
``top_m_0``, ``conv_last0``, ``bn_end0``, ``l0``). The StarGAN v2 maintainers say ``wing.ckpt``
holds AdaptiveWingLoss's weights, so it should load name for name; no copy of the real file was at
hand when this was written, so that is checked by names and the parameter count only.

The network is frozen: it is only a fixed mask source, never trained, always in eval mode (its
BatchNorm layers use their stored statistics).

It is *not* stored in our training checkpoints (unlike the official code, which saves it in every
``nets`` and ``nets_ema`` file): the weights are an input that never changes, so copying 25 MB into
each checkpoint buys nothing, and keeping them out means a checkpoint holds only what training
produced. :func:`load_fan` reads ``train.v2.wing_path`` each time a model is built (training,
resume, inference), so that file must stay where the config says.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stargan.config import ConfigError

__all__ = ["FAN", "ConvBlock", "HourGlass", "CoordConv", "load_fan", "WING_URL", "FAN_INPUT_SIZE",
           "REGIONS", "heatmaps_to_masks"]

WING_URL = "https://www.dropbox.com/s/tjxpypwpt38926e/wing.ckpt?dl=0"
FAN_INPUT_SIZE = 256
HEATMAP_FLOOR = 0.1

# WFLW's 98-point layout, by face region: (first index, last index + 1, weight in the coarse mask,
# weight in the fine mask). The official code tunes a shift and a power per region by hand; those
# numbers are not reproduced here. This weighting is our own, chosen to be simple: every region
# counts fully, except that the jaw contour counts half in the coarse mask (it is a long curve
# mostly over cheek and background, whose detail matters least for identity) and the fine mask
# keeps only eyes, pupils and nose (the official fine mask also drops chin, lips and eyebrows).
REGIONS: dict[str, tuple[int, int, float, float]] = {
    "contour": (0, 33, 0.5, 0.0),
    "eyebrows": (33, 51, 1.0, 0.0),
    "nose": (51, 60, 1.0, 1.0),
    "eyes": (60, 76, 1.0, 1.0),
    "mouth": (76, 96, 1.0, 0.0),      # 76-87 outer lip, 88-95 inner lip
    "pupils": (96, 98, 1.0, 1.0),
}


def _region_weights(num_landmarks: int) -> Tensor:
    """[2, num_landmarks] weights of each heatmap in the (coarse, fine) masks."""
    if num_landmarks != 98:
        raise ValueError(f"the face regions are WFLW's 98 landmarks, got {num_landmarks} heatmaps")
    w = torch.zeros(2, num_landmarks)
    for start, stop, coarse, fine in REGIONS.values():
        w[0, start:stop], w[1, start:stop] = coarse, fine
    return w


class CoordConv(nn.Module):
    """Conv over the input plus three coordinate channels: row and column position, each in
    [-1, 1], and the distance from the centre divided by its maximum (CoordConv with ``r``).
    The order (input, row, column, radius) is the one the pretrained weights expect."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 3, out_channels, kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        rows = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
        cols = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
        radius = torch.sqrt(rows ** 2 + cols ** 2)
        coords = torch.stack([rows, cols, radius / radius.max()])[None].expand(b, 3, h, w)
        return self.conv(torch.cat([x, coords], dim=1))


def _conv3x3(dim_in: int, dim_out: int) -> nn.Conv2d:
    return nn.Conv2d(dim_in, dim_out, 3, 1, 1, bias=False)


class ConvBlock(nn.Module):
    """Hierarchical bottleneck: three BN-ReLU-conv3x3 stages of widths out/2, out/4, out/4 whose
    outputs are concatenated (out channels) and added to the input (through BN-ReLU-conv1x1 when
    the width changes)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        half, quarter = dim_out // 2, dim_out // 4
        self.bn1 = nn.BatchNorm2d(dim_in)
        self.conv1 = _conv3x3(dim_in, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        if dim_in != dim_out:
            self.downsample = nn.Sequential(nn.BatchNorm2d(dim_in), nn.ReLU(),
                                            nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        shortcut = self.downsample(x) if hasattr(self, "downsample") else x
        return torch.cat([out1, out2, out3], dim=1) + shortcut


class HourGlass(nn.Module):
    """1x1 coord-conv, then a recursive hourglass of ``depth`` levels at constant width. Level ``n``:
    ``b1_n(x) + up2(b3_n(inner(b2_n(avgpool2(x)))))`` where ``inner`` is level ``n-1``, or the
    block ``b2_plus_1`` at the bottom."""

    def __init__(self, depth: int = 4, features: int = 256):
        super().__init__()
        self.depth = depth
        self.coordconv = CoordConv(features, features, 1)
        for level in range(depth, 0, -1):
            for name in ("b1_", "b2_", "b3_"):
                self.add_module(f"{name}{level}", ConvBlock(features, features))
        self.b2_plus_1 = ConvBlock(features, features)

    def _level(self, level: int, x: Tensor) -> Tensor:
        upper = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2))
        low = self._level(level - 1, low) if level > 1 else self.b2_plus_1(low)
        low = self._modules[f"b3_{level}"](low)
        return upper + F.interpolate(low, scale_factor=2, mode="nearest")

    def forward(self, x: Tensor) -> Tensor:
        return self._level(self.depth, self.coordconv(x))


class FAN(nn.Module):
    """FAN(x) -> [B, num_landmarks + 1, H/4, W/4] heatmaps for x in [0, 1] (256 px for the
    pretrained weights); :meth:`get_heatmap` turns them into StarGAN v2's (coarse, fine) masks.

    ``input_size`` is the size :meth:`get_heatmap` runs the net at: 256, what the pretrained
    weights were trained for. The net is fully convolutional, so tests lower it to keep CPU runs
    fast; real use should leave it alone.

    Only ``num_modules=1`` is built: StarGAN v2 uses one hourglass, and further stacks would also
    need the boundary-channel coord-conv that the first stack does not have."""

    input_size: int = FAN_INPUT_SIZE

    def __init__(self, num_modules: int = 1, num_landmarks: int = 98):
        super().__init__()
        if num_modules != 1:
            raise ValueError(f"only num_modules=1 (one hourglass, as StarGAN v2) is built, got {num_modules}")
        if num_landmarks != 98:
            raise ValueError(f"the face-region masks need WFLW's 98 landmarks, got {num_landmarks}")
        self.num_landmarks = num_landmarks
        self.conv1 = CoordConv(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        self.m0 = HourGlass(4, 256)
        self.top_m_0 = ConvBlock(256, 256)
        self.conv_last0 = nn.Conv2d(256, 256, 1, 1, 0)
        self.bn_end0 = nn.BatchNorm2d(256)
        self.l0 = nn.Conv2d(256, num_landmarks + 1, 1, 1, 0)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FAN:
        """Always eval: the FAN is a frozen mask source, so a caller's ``.train()`` on a bundle of
        nets must not switch its BatchNorm layers to batch statistics."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        x = self.top_m_0(self.m0(x))
        x = F.relu(self.bn_end0(self.conv_last0(x)))
        return self.l0(x)

    @torch.no_grad()
    def get_heatmap(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(coarse, fine) masks in [0, 1], each [B, 1, H, W] at ``x``'s size, for x in [-1, 1].

        x is resized to ``input_size`` (256, what the pretrained weights expect) and mapped to
        [0, 1]; the 98 landmark heatmaps (boundary channel dropped) go through
        :func:`heatmaps_to_masks`. Runs in fp32 outside any autocast (the masks are small inputs,
        not worth the precision loss) and always under ``no_grad``: they are constants of the G
        loss, as in the paper.
        """
        size = (int(x.shape[-2]), int(x.shape[-1]))   # static ints: constant under export tracing
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = _resize(x.float(), (self.input_size, self.input_size))
            heat = self((x + 1) / 2)[:, : self.num_landmarks]
            return heatmaps_to_masks(heat, size)


def heatmaps_to_masks(heat: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """WFLW landmark heatmaps [B, 98, h, w] -> (coarse, fine) masks [B, 1, *size] in [0, 1].

    Heatmaps are upsampled to 256 px, values below 0.1 set to 0 (FAN's low background response
    is noise, not a face), each channel min-max normalised per image (so every landmark counts
    the same however confident the net is), then summed with the :data:`REGIONS` weights,
    clamped to [0, 1] and resized to ``size``. Resizing down averages (area), so a landmark
    blob a few pixels wide still reaches a 32-px mask.
    """
    heat = _resize(heat.float(), (FAN_INPUT_SIZE, FAN_INPUT_SIZE))
    heat = heat.masked_fill(heat < HEATMAP_FLOOR, 0.0)
    lo = heat.amin(dim=(2, 3), keepdim=True)
    hi = heat.amax(dim=(2, 3), keepdim=True)
    heat = (heat - lo) / (hi - lo).clamp_min(1e-6)
    weights = _region_weights(heat.size(1)).to(heat.device)
    masks = torch.einsum("rk,bkhw->brhw", weights, heat).clamp(0.0, 1.0)
    masks = _resize(masks, size).clamp(0.0, 1.0)
    return masks[:, :1], masks[:, 1:]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear up, area (box average) down. Area rather than bilinear for shrinking: plain
    bilinear would point-sample a 256-px landmark blob, and bilinear's ``antialias=True`` has no
    ONNX export, which the exported generator of a ``w_hpf > 0`` model needs. Integer factors (the
    usual 256 -> 128/64/32) use ``avg_pool2d``, the same average, because the legacy ONNX exporter
    cannot export ``area`` from a traced input size."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        if h % size[0] == 0 and w % size[1] == 0:
            return F.avg_pool2d(x, (h // size[0], w // size[1]))
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------ loading

# Keys of hourglass stacks after the first (a multi-stack FAN checkpoint): the official loader keeps
# only the keys its one-stack FAN has, so such a file gives the first stack's heatmaps. We drop
# exactly these and nothing else; any other unexpected key is an error.
_LATER_STACK = re.compile(r"^(?:(?:m|top_m_|conv_last|bn_end|l)[1-9]\d*|bl\d+|al\d+)\.")
_FIX = (f"Download the official wing.ckpt ({WING_URL}) and point train.v2.wing_path at it, "
        "or set train.v2.w_hpf: 0")


def _fail(path: Path, what: str) -> ConfigError:
    return ConfigError(f"train.v2.wing_path: {path}: {what}. {_FIX}")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The file's state dict: ``{"state_dict": sd, ...}`` (the official format) or a bare ``sd``,
    read with ``weights_only=True`` (no pickled code runs), ``module.`` prefixes removed."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types; all mean "unreadable here"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise _fail(path, f"cannot read it as a weights-only torch file ({first}). If it is a trusted "
                    "copy of wing.ckpt that also pickles non-tensor objects, save its 'state_dict' "
                    "alone once with torch.save and use that file") from None
    sd = payload.get("state_dict", payload) if isinstance(payload, Mapping) else payload
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise _fail(path, "holds no state dict of tensors (expected {'state_dict': {...}} or a bare "
                    f"state dict; got {type(payload).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _head(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_fan(path: str | Path, device: torch.device | str | None = None) -> FAN:
    """A frozen :class:`FAN` with the weights of ``path`` (``train.v2.wing_path``).

    Strict: every key of the network must be in the file with the same shape, and the file may
    hold no other key except those of further hourglass stacks (see ``_LATER_STACK``). Any
    mismatch raises :class:`ConfigError` naming the file, the first offending keys and the fix,
    because a FAN with random or partly loaded weights would silently train a generator against
    meaningless masks. ``num_batches_tracked`` may be missing (BatchNorm in eval mode never uses it).
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    sd = _read_state_dict(path)
    with torch.random.fork_rng(devices=[]):      # the random init is overwritten; leave the caller's RNG alone
        fan = FAN()
    own = fan.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not _LATER_STACK.match(k)}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in FAN"
              for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    problems = [f"{label}: {_head(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        raise _fail(path, "is not a FAN(num_modules=1, num_landmarks=98) landmark checkpoint; "
                    + "; ".join(problems))
    fan.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)
    return fan.to(device=device).requires_grad_(False).eval()
