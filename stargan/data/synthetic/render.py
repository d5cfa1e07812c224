"""Drawing a :class:`FaceParams` onto a canvas with OpenCV (anti-aliased, supersampled).

Every shape is a polygon or polyline in face units, mapped to the canvas by the pose, so
rotation and scale need no special cases. What each attribute looks like:

- hair colour: the colour of the large hair region (crown, fringe and, when long, the sides);
- Male: a dark grey-blue beard shadow over the jaw, thick brows and skin-toned lips; otherwise
  red lips and dark lashes. Hair length is an identity trait (``short_hair``: a cap with the
  ears showing, or hair down past the jaw), not a sign of sex: a change of outline is what a
  small residual generator learns slowest (with hair length tied to Male, 0.17-0.19 of the
  translations to Male were recognised after 1,200 iterations; with the beard alone, 0.9-0.98);
- Young: smooth skin; otherwise grey, dull skin with dark eye bags, nasolabial folds,
  forehead lines, crow's feet and jowl lines;
- Eyeglasses: dark round frames with a bridge and temples;
- expression: brows (height, slant, thickness), eye opening, mouth shape and the skin colour it
  brings (see ``_EXPRESSIONS`` and ``_EXPRESSION_SKIN``).

How much of the image an attribute changes is a design choice, not an accident: a translation can
only be judged against the true counterfactual if the change is larger than what a small
generator's reconstruction blurs away. Expressions are therefore drawn as a caricaturist would: a
mouth 1.7x the anatomical size, brows that move by a tenth of the face, and the colour an emotion
puts in the face (anger's flush, fear's pallor, a strong blush when happy, the blue-grey of
sadness). The evaluate stage reports what each target changes on the aligned 32-px test faces
(``reports/eval.json``: ``counterfactual/<dataset>/<target>/identity_l1``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from stargan.data.synthetic.face import FaceParams, landmarks

HAIR_RGB = {"black": (34, 28, 26), "brown": (118, 70, 36), "blond": (232, 200, 118)}
STUDIO_RGB = (236, 236, 232)
SHADOW_RGB = np.array([62, 62, 70])

# expression -> (brow raise, brow inner drop, eye opening, right-brow extra raise)
_EXPRESSIONS = {
    "neutral": (0.0, 0.0, 1.0, 0.0),
    "happy": (0.05, 0.0, 0.4, 0.0),
    "sad": (0.03, -0.17, 0.65, 0.0),
    "angry": (-0.1, 0.2, 0.5, 0.0),
    "surprised": (0.22, 0.0, 1.8, 0.0),
    "fearful": (0.16, -0.15, 1.6, 0.0),
    "disgusted": (-0.1, 0.08, 0.35, 0.0),
    "contemptuous": (-0.04, 0.0, 0.7, 0.24),
}
# expression -> (colour the emotion brings to the skin, its strength): a flush, a pallor, a tint
_EXPRESSION_SKIN = {
    "angry": ((196, 40, 34), 0.3),
    "fearful": ((238, 238, 226), 0.4),
    "sad": ((96, 110, 150), 0.45),
    "disgusted": ((120, 150, 60), 0.25),
}
MOUTH_SCALE = 1.7      # expressions' mouths, relative to the anatomical size (see the module doc)
BEARD_SHADOW = 0.75    # how far a male jaw's skin goes towards SHADOW_RGB
BROW_WIDTH = {True: 0.09, False: 0.065}   # male / female brow thickness, face units


def _ellipse(cx: float, cy: float, ax: float, ay: float, t0: float = 0.0, t1: float = 2 * math.pi,
             n: int = 40) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _curve(x0: float, x1: float, y: float, sag: float, skew: float = 0.0, n: int = 12) -> np.ndarray:
    """A parabola from x0 to x1 at height y, ``sag`` lower in the middle, ``skew`` lower at x1."""
    x = np.linspace(x0, x1, n)
    u = (x - x0) / (x1 - x0) * 2 - 1
    return np.stack([x, y + sag * (1 - u * u) + skew * (u + 1) / 2], axis=1)


def _mix(a, b, t: float) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in np.asarray(a, float) * (1 - t) + np.asarray(b, float) * t)


class _Painter:
    """Draws face-unit shapes on an image through a 2x3 affine (with 4 fractional bits)."""

    def __init__(self, img: np.ndarray, affine: np.ndarray):
        self.img, self.a = img, affine
        self.unit = float(np.hypot(*affine[:, 0]))          # pixels per face unit

    def _pts(self, pts: np.ndarray) -> np.ndarray:
        p = np.asarray(pts, float) @ self.a[:, :2].T + self.a[:, 2]
        return np.round(p * 16).astype(np.int32)

    def fill(self, pts, colour, alpha: float = 1.0) -> None:
        dst = self.img if alpha >= 1 else self.img.copy()
        cv2.fillPoly(dst, [self._pts(pts)], tuple(int(c) for c in colour), cv2.LINE_AA, 4)
        if alpha < 1:
            cv2.addWeighted(dst, alpha, self.img, 1 - alpha, 0, dst=self.img)

    def line(self, pts, colour, width: float, alpha: float = 1.0, closed: bool = False) -> None:
        dst = self.img if alpha >= 1 else self.img.copy()
        th = max(1, int(round(width * self.unit)))
        cv2.polylines(dst, [self._pts(pts)], closed, tuple(int(c) for c in colour), th, cv2.LINE_AA, 4)
        if alpha < 1:
            cv2.addWeighted(dst, alpha, self.img, 1 - alpha, 0, dst=self.img)

    def scaled(self, centre: tuple[float, float], factor: float) -> "_Painter":
        """The same canvas with shapes (and line widths) scaled by ``factor`` about ``centre``."""
        c = np.asarray(centre, float)
        a = self.a.copy()
        a[:, :2] = self.a[:, :2] * factor
        a[:, 2] = self.a[:, :2] @ (c - factor * c) + self.a[:, 2]
        return _Painter(self.img, a)


# ------------------------------------------------------------------------- background

def _background(img: np.ndarray, seed: int, studio: bool, clutter: bool = True) -> None:
    """Studio grey, or a two-colour gradient with (``clutter``) random shapes on it."""
    if studio:
        img[:] = STUDIO_RGB
        return
    rng = np.random.default_rng([seed, 7])
    n = img.shape[0]
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    a = rng.uniform(0, 2 * math.pi)
    g = np.linspace(0.0, 1.0, n)
    t = np.clip(0.5 + (g[None, :] - 0.5) * math.cos(a) + (g[:, None] - 0.5) * math.sin(a), 0, 1)
    img[:] = (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8)
    if not clutter:
        return
    paint = _Painter(img, np.array([[n, 0.0, 0.0], [0.0, n, 0.0]]))   # unit = canvas side
    for _ in range(int(rng.integers(5, 12))):
        kind = int(rng.integers(4))
        colour = rng.integers(0, 256, 3)
        alpha = float(rng.uniform(0.5, 1.0))
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        if kind == 0:      # rectangle
            w, h = rng.uniform(0.08, 0.5, 2)
            paint.fill([[cx - w, cy - h], [cx + w, cy - h], [cx + w, cy + h], [cx - w, cy + h]], colour, alpha)
        elif kind == 1:    # disc
            r = rng.uniform(0.04, 0.25)
            paint.fill(_ellipse(cx, cy, r, r * rng.uniform(0.6, 1.4)), colour, alpha)
        elif kind == 2:    # stroke
            paint.line(rng.uniform(-0.1, 1.1, (int(rng.integers(2, 5)), 2)), colour, rng.uniform(0.01, 0.04), alpha)
        else:              # irregular polygon
            k = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            r = rng.uniform(0.05, 0.3, k)
            paint.fill(np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1), colour, alpha)


# ------------------------------------------------------------------------------- face

def _head(p: FaceParams, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Head outline: an ellipse whose lower half narrows by ``jaw``."""
    t = np.linspace(0, 2 * math.pi, 64)
    s = np.sin(t)
    w = (p.face_width + dx) * (1 - (1 - p.jaw) * np.clip(s, 0, None) ** 2)
    return np.stack([w * np.cos(t), 0.3 + (p.face_height + dy) * s], axis=1)


def _short_hair(p: FaceParams) -> bool:
    return p.male if p.short_hair is None else p.short_hair


def _hair_back(paint: _Painter, p: FaceParams, hair) -> None:
    v = p.hair_volume
    w, top = p.face_width + 0.1 + v, 0.3 - p.face_height - 0.08 - v
    if _short_hair(p):   # a cap that ends above the ears
        paint.fill(_ellipse(0, 0.3, w, 0.3 - top, math.pi + 0.3, 2 * math.pi - 0.3), hair)
    else:        # long hair: crown plus sides down past the jaw
        crown = _ellipse(0, 0.3, w + 0.1, 0.3 - top, math.pi, 2 * math.pi)
        bottom = 1.75 + v
        sides = [[w + 0.14, bottom], [w * 0.55, bottom + 0.12], [-w * 0.55, bottom + 0.12], [-w - 0.14, bottom]]
        paint.fill(np.vstack([crown, sides]), hair)


def _fringe(paint: _Painter, p: FaceParams, hair) -> None:
    head = _head(p, 0.03, 0.03)
    top = head[head[:, 1] < p.hairline]
    top = top[np.argsort(top[:, 0])]
    x0, x1 = top[0, 0], top[-1, 0]
    edge = _curve(x1, x0, p.hairline, 0.1, n=14)
    paint.fill(np.vstack([top, edge]), hair)
    if not _short_hair(p):   # strands falling over the temples
        for side in (-1, 1):
            w = p.face_width
            paint.fill([[side * (w + 0.02), p.hairline + 0.1], [side * (w - 0.1), p.hairline + 0.12],
                        [side * (w - 0.03), 0.55], [side * (w + 0.05), 0.7]], hair)


def _eye(paint: _Painter, p: FaceParams, cx: float, opening: float, skin, lid_w: float) -> None:
    ax, ay = 0.17 * p.eye_size, 0.075 * p.eye_size * opening
    white = _ellipse(cx, 0.0, ax, ay, n=28)
    paint.fill(white, (246, 246, 242))
    for r, colour in ((0.068 * p.eye_size, p.eye_colour), (0.032 * p.eye_size, (16, 14, 14))):
        disc = _ellipse(cx, 0.0, r, r, n=20)
        half = ay * np.sqrt(np.clip(1 - ((disc[:, 0] - cx) / ax) ** 2, 0, 1))
        disc[:, 1] = np.clip(disc[:, 1], -half, half)
        paint.fill(disc, colour)
    paint.line(_ellipse(cx, 0.0, ax, ay, math.pi, 2 * math.pi, n=14), (30, 22, 20), lid_w)
    paint.line(_ellipse(cx, 0.0, ax, ay, 0.15, math.pi - 0.15, n=12), _mix(skin, (40, 30, 30), 0.45), 0.018)


def _brow(paint: _Painter, p: FaceParams, side: int, raise_: float, inner_drop: float, colour, width: float):
    cx = side * p.eye_spacing / 2
    inner, outer = cx - side * 0.17, cx + side * 0.2
    y = -0.27 - raise_
    pts = _curve(inner, outer, y + inner_drop, -0.05, skew=-inner_drop, n=8)
    paint.line(pts, colour, width)


def _mouth(paint: _Painter, p: FaceParams, lips, skin) -> None:
    m = p.mouth_width / 2
    dark, teeth = (70, 22, 28), (244, 240, 228)
    e = p.expression
    if e == "happy":
        paint.fill(np.vstack([_curve(-m, m, 1.0, -0.02), _curve(m, -m, 1.0, 0.26)]), lips)
        paint.fill(np.vstack([_curve(-m + 0.03, m - 0.03, 1.0, 0.03), _curve(m - 0.03, -m + 0.03, 1.0, 0.2)]), dark)
        paint.fill(np.vstack([_curve(-m + 0.05, m - 0.05, 1.0, 0.035), _curve(m - 0.05, -m + 0.05, 1.02, 0.06)]), teeth)
    elif e == "surprised":
        paint.fill(_ellipse(0, 1.06, 0.17, 0.22), lips)
        paint.fill(_ellipse(0, 1.06, 0.12, 0.17), dark)
    elif e == "fearful":
        paint.fill(np.vstack([_curve(-m, m, 0.96, -0.03), _curve(m, -m, 1.1, 0.06)]), lips)
        paint.fill(np.vstack([_curve(-m + 0.04, m - 0.04, 0.98, -0.02), _curve(m - 0.04, -m + 0.04, 1.08, 0.03)]), dark)
        paint.fill(np.vstack([_curve(-m + 0.08, m - 0.08, 1.06, 0.02), _curve(m - 0.08, -m + 0.08, 1.09, 0.03)]), teeth)
    elif e == "angry":
        w = 0.82 * m
        paint.fill([[-w, 0.93], [w, 0.93], [w + 0.02, 1.08], [-w - 0.02, 1.08]], lips)
        paint.fill([[-w + 0.03, 0.96], [w - 0.03, 0.96], [w - 0.02, 1.05], [-w + 0.02, 1.05]], teeth)
        paint.line([[-w + 0.03, 1.005], [w - 0.03, 1.005]], (90, 80, 80), 0.02)
    elif e == "disgusted":
        upper = _curve(-m, m, 0.97, -0.02, skew=-0.08)
        paint.fill(np.vstack([upper, _curve(m, -m, 1.04, 0.05)]), lips)
        paint.fill(np.vstack([_curve(-m + 0.06, m - 0.06, 0.99, -0.02, skew=-0.07),
                              _curve(m - 0.06, -m + 0.06, 1.02, 0.02)]), teeth)
        for k in range(3):   # nose wrinkles
            paint.line(_curve(-0.1, 0.1, 0.1 + 0.06 * k, -0.025), _mix(skin, (60, 40, 40), 0.5), 0.022)
    elif e == "sad":
        paint.fill(np.vstack([_curve(-m, m, 1.0, -0.14), _curve(m, -m, 1.04, -0.1)]), lips)
        paint.line(_curve(-m, m, 1.01, -0.12), dark, 0.035)
    elif e == "contemptuous":
        paint.fill(np.vstack([_curve(-m, m, 1.0, 0.01, skew=-0.14), _curve(m, -m, 1.03, 0.03, skew=0.14)]), lips)
        paint.line(_curve(-m, m + 0.03, 1.01, 0.02, skew=-0.17), dark, 0.035)
        paint.line([[m - 0.04, 0.8], [m + 0.08, 0.94]], _mix(skin, (60, 40, 40), 0.6), 0.04)   # one-sided dimple
        paint.fill(_ellipse(m + 0.1, 0.7, 0.16, 0.12), _mix(skin, (200, 80, 80), 0.5), 0.5)      # the raised cheek
    else:   # neutral
        paint.fill(np.vstack([_curve(-m, m, 1.0, -0.04), _curve(m, -m, 1.0, 0.07)]), lips)
        paint.line(_curve(-m, m, 1.0, 0.005), dark, 0.03)


def _face(paint: _Painter, p: FaceParams) -> None:
    skin = np.asarray(p.skin, float)
    if not p.young:   # grey, dull skin
        skin = 0.15 * skin + 0.85 * skin.mean() * 0.8
    skin = tuple(int(round(c)) for c in skin)
    hair = _mix((0, 0, 0), HAIR_RGB[p.hair], min(1.0, p.hair_shade))
    if p.hair_shade > 1:
        hair = _mix(hair, (255, 255, 255), (p.hair_shade - 1) * 0.5)
    line_col = _mix(skin, (50, 30, 30), 0.75)

    _hair_back(paint, p, hair)
    paint.fill([[-0.36, 0.9], [0.36, 0.9], [0.42, 2.4], [-0.42, 2.4]], _mix(skin, (0, 0, 0), 0.2))   # neck
    paint.fill(_ellipse(0, 2.45, 1.7, 0.85), p.clothes)
    if _short_hair(p):   # ears
        for side in (-1, 1):
            paint.fill(_ellipse(side * p.face_width * 0.97, 0.2, 0.11, 0.19), _mix(skin, (0, 0, 0), 0.08))
    head = _head(p)
    paint.fill(head, skin)
    if p.male:   # beard shadow over the jaw, up to the nose
        low = head[head[:, 1] > p.nose_length + 0.12]
        low = low[np.argsort(-low[:, 0])]
        paint.fill(np.vstack([low, _curve(low[-1, 0], low[0, 0], p.nose_length + 0.12, -0.05)]),
                   _mix(skin, SHADOW_RGB, BEARD_SHADOW))
    if not p.young:
        for side in (-1, 1):   # nasolabial folds, jowls, eye bags
            m = p.mouth_width / 2
            paint.line([[side * 0.13, p.nose_length - 0.02], [side * (m + 0.09), 0.95], [side * (m + 0.07), 1.1]],
                       line_col, 0.045)
            paint.line([[side * (m + 0.1), 1.18], [side * (m + 0.02), 1.32]], line_col, 0.04)
            paint.fill(_ellipse(side * p.eye_spacing / 2, 0.12, 0.18 * p.eye_size, 0.08), line_col, 0.7)
            e = side * (p.eye_spacing / 2 + 0.2 * p.eye_size)      # crow's feet
            for dy in (-0.05, 0.0, 0.05):
                paint.line([[e, dy * 0.5], [e + side * 0.1, dy * 1.6]], line_col, 0.025)
        for k in range(2):
            y = p.hairline + 0.09 + 0.07 * k
            if y < -0.33:
                paint.line(_curve(-0.32, 0.32, y, -0.03), line_col, 0.03)
    if p.expression in _EXPRESSION_SKIN:
        colour, strength = _EXPRESSION_SKIN[p.expression]
        paint.fill(_head(p, -0.06, -0.06), colour, strength)
    elif p.expression == "happy":     # a blush on the cheeks
        for side in (-1, 1):
            paint.fill(_ellipse(side * (p.eye_spacing / 2 + 0.02), 0.5, 0.26, 0.18), (236, 80, 110), 0.75)
    _fringe(paint, p, hair)

    raise_, drop, opening, right_raise = _EXPRESSIONS[p.expression]
    lid_w = 0.028 if p.male else 0.05
    brow_col = _mix(hair, (30, 24, 22), 0.6) if p.young else _mix(hair, (200, 200, 200), 0.6)   # grey brows with age
    for side in (-1, 1):
        _eye(paint, p, side * p.eye_spacing / 2, opening, skin, lid_w)
        _brow(paint, p, side, raise_ + (right_raise if side > 0 else 0.0), drop, brow_col, BROW_WIDTH[p.male])
    # nose: a soft shadow along the bridge, and nostrils at the tip
    n = p.nose_length
    paint.fill([[0.02, 0.08], [0.07, n - 0.06], [0.11, n], [0.0, n + 0.04], [-0.02, n - 0.1]],
               _mix(skin, (0, 0, 0), 0.16))
    for side in (-1, 1):
        paint.fill(_ellipse(side * 0.065, n + 0.01, 0.04, 0.022, n=12), _mix(skin, (40, 20, 20), 0.55))
    lips = _mix(skin, (150, 60, 60), 0.35) if p.male else (184, 52, 72)
    _mouth(paint.scaled((0.0, 1.0), MOUTH_SCALE), p, lips, skin)
    if p.expression == "happy":   # raised cheeks
        for side in (-1, 1):
            x0 = side * (p.eye_spacing / 2 - 0.05)
            paint.line(_curve(x0, x0 + side * 0.24, 0.2, 0.0, skew=0.04, n=4), line_col, 0.035, alpha=0.8)
    elif p.expression == "surprised":   # forehead lines of raised brows
        for k in range(3):
            paint.line(_curve(-0.3, 0.3, -0.46 - 0.07 * k, -0.03), line_col, 0.025, alpha=0.8)
    elif p.expression == "angry":       # the frown between the brows
        for side in (-1, 1):
            paint.line([[side * 0.05, -0.2], [side * 0.09, -0.38]], line_col, 0.03)
    if p.eyeglasses:
        frame = (24, 24, 28)
        e = p.eye_spacing / 2
        for side in (-1, 1):
            paint.line(_ellipse(side * e, 0.0, 0.23, 0.17), frame, 0.05, closed=True)
            paint.line([[side * (e + 0.23), -0.02], [side * p.face_width * 1.02, -0.06]], frame, 0.045)
        paint.line(_curve(-e + 0.23, e - 0.23, -0.02, -0.04, n=6), frame, 0.045)


def render(params: FaceParams | dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the in-the-wild canvas: ``(rgb uint8 (size, size, 3), landmarks float32 (5, 2))``."""
    p = params if isinstance(params, FaceParams) else FaceParams.from_dict(params)
    ss = 2 if size < 512 else 1        # supersampling factor
    big = np.empty((size * ss, size * ss, 3), np.uint8)
    _background(big, p.background_seed, p.studio, p.clutter)
    a = p.to_canvas(size)
    a_big = np.vstack([a[0] * ss, a[1] * ss])
    a_big[:, 2] += (ss - 1) / 2        # pixel centres: u = (x + 0.5) * ss - 0.5
    _face(_Painter(big, a_big), p)
    img = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA) if ss > 1 else big
    if not p.studio and p.clutter:     # sensor noise, seeded like the background
        noise = np.random.default_rng([p.background_seed, 11]).normal(0, 2.5, img.shape)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), landmarks(p, size)
