"""What a synthetic face is: its parameters, its landmarks, random draws and counterfactuals.

Geometry lives in *face units*: the midpoint between the eyes is the origin, the mouth centre
is ``(0, 1)`` (so one unit is the eye-to-mouth distance) and ``y`` points down. A pose maps
face units onto the canvas (centre, scale, rotation). Landmarks depend only on the identity
traits and the pose, never on the attributes or the expression, so a counterfactual
rendering is aligned by exactly the matrix that aligns the original.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from stargan.data.formats import RAFD_EXPRESSIONS

HAIR_COLOURS = ("black", "blond", "brown")
HAIR_ATTRIBUTES = {"Black_Hair": "black", "Blond_Hair": "blond", "Brown_Hair": "brown"}
#: The attributes the issue asks for, in the pipeline's usual label order.
CELEBA_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
#: Every column of the synthetic ``list_attr_celeba.txt``, in real CelebA's column order.
CELEBA_LIST_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Male", "Smiling", "Young")

#: Where the RaFD-like studio canvas puts the face (the aligned framing of the pipeline):
#: the eye midpoint at 40% of the height, eye-to-mouth distance = 0.45 x side
#: (``align.face_fraction``).
CANONICAL_EYE_Y = 0.40
CANONICAL_FACE_FRACTION = 0.45


@dataclass(frozen=True)
class FaceParams:
    """Everything :func:`stargan.data.synthetic.render` needs to draw one image."""
    identity: int
    # identity traits (face units)
    skin: tuple[int, int, int]          # RGB
    face_width: float                   # half-width of the head
    face_height: float                  # half-height of the head
    jaw: float                          # lower-face width relative to the upper (face shape)
    eye_spacing: float                  # distance between the eye centres
    eye_size: float
    eye_colour: tuple[int, int, int]
    nose_length: float                  # nose tip below the eye line
    mouth_width: float                  # distance between the mouth corners
    hairline: float                     # y of the fringe's lower edge
    hair_volume: float                  # how far the hair stands off the head
    hair_shade: float                   # brightness factor on the hair colour
    clothes: tuple[int, int, int]
    # pose on the canvas (fractions of the side; angle in degrees, clockwise on screen)
    x: float
    y: float
    scale: float                        # eye-to-mouth distance / canvas side
    angle: float
    background_seed: int
    studio: bool                        # plain background (RaFD-like) instead of clutter
    # attributes (the labels)
    hair: str                           # one of HAIR_COLOURS
    male: bool
    young: bool
    eyeglasses: bool
    expression: str                     # one of RAFD_EXPRESSIONS
    # how the in-the-wild canvas looks (not a label): random shapes and sensor noise, or a clean gradient
    clutter: bool = True
    # identity trait: short hair with the ears showing, or long hair past the jaw, whatever the sex.
    # None (rows written before it existed): short exactly when male, as the first renderer drew it
    short_hair: bool | None = None

    def __post_init__(self):
        if self.hair not in HAIR_COLOURS:
            raise ValueError(f"FaceParams.hair: {self.hair!r}; expected one of {', '.join(HAIR_COLOURS)}")
        if self.expression not in RAFD_EXPRESSIONS:
            raise ValueError(f"FaceParams.expression: {self.expression!r}; expected one of "
                             f"{', '.join(RAFD_EXPRESSIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FaceParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        defaulted = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = sorted(names - set(d) - defaulted)      # rows written before a defaulted field existed
        if unknown or missing:
            raise ValueError(f"FaceParams.from_dict: unknown keys {unknown}, missing keys {missing}")
        return cls(**{k: tuple(int(c) for c in v) if isinstance(v, list) else v for k, v in d.items()})

    # ------------------------------------------------------------------ geometry
    def landmarks_local(self) -> np.ndarray:
        """The 5 landmarks in face units: left eye, right eye, nose tip, left/right mouth corner."""
        e, m = self.eye_spacing / 2, self.mouth_width / 2
        return np.array([[-e, 0.0], [e, 0.0], [0.0, self.nose_length], [-m, 1.0], [m, 1.0]])

    def to_canvas(self, size: int) -> np.ndarray:
        """2x3 affine from face units to canvas pixel coordinates (pixel centres at integers)."""
        s = self.scale * size
        a = math.radians(self.angle)
        c, si = math.cos(a) * s, math.sin(a) * s
        return np.array([[c, -si, self.x * size - 0.5], [si, c, self.y * size - 0.5]])


def landmarks(params: FaceParams, size: int) -> np.ndarray:
    """(5, 2) float32 pixel coordinates of the landmarks on a ``size`` canvas."""
    a = params.to_canvas(size)
    return (params.landmarks_local() @ a[:, :2].T + a[:, 2]).astype(np.float32)


# ---------------------------------------------------------------------- random draws

SKIN_LIGHT = np.array([242, 208, 182])
SKIN_DARK = np.array([146, 98, 70])
EYE_COLOURS = ((92, 58, 32), (60, 100, 160), (70, 112, 64), (100, 110, 118))


def _r(v: float) -> float:
    return round(float(v), 4)


def sample_traits(rng: np.random.Generator) -> dict[str, Any]:
    """Identity traits: what a translation must keep."""
    t = rng.uniform(0.0, 1.0)
    skin = tuple(int(round(c)) for c in SKIN_LIGHT * (1 - t) + SKIN_DARK * t)
    return dict(
        skin=skin, face_width=_r(rng.uniform(0.74, 0.9)), face_height=_r(rng.uniform(1.0, 1.14)),
        jaw=_r(rng.uniform(0.72, 0.95)), eye_spacing=_r(rng.uniform(0.86, 1.06)),
        eye_size=_r(rng.uniform(0.88, 1.18)), eye_colour=EYE_COLOURS[int(rng.integers(len(EYE_COLOURS)))],
        nose_length=_r(rng.uniform(0.48, 0.64)), mouth_width=_r(rng.uniform(0.5, 0.68)),
        hairline=_r(rng.uniform(-0.56, -0.44)), hair_volume=_r(rng.uniform(0.04, 0.16)),
        hair_shade=_r(rng.uniform(0.85, 1.12)),
        clothes=tuple(int(c) for c in rng.integers(20, 236, 3)), short_hair=bool(rng.random() < 0.5))


def sample_wild_pose(rng: np.random.Generator, clutter: bool = True) -> dict[str, Any]:
    """An in-the-wild pose: random scale, rotation and placement, and a background seed."""
    scale = rng.uniform(0.2, 0.3)
    angle = rng.uniform(-22.0, 22.0)
    # place the face centre (about 0.3 units below the eyes) near the canvas centre
    cx, cy = 0.5 + rng.uniform(-0.1, 0.1), 0.52 + rng.uniform(-0.08, 0.08)
    a = math.radians(angle)
    x, y = cx + math.sin(a) * 0.3 * scale, cy - math.cos(a) * 0.3 * scale
    return dict(x=_r(x), y=_r(y), scale=_r(scale), angle=_r(angle),
                background_seed=int(rng.integers(2**31 - 1)), studio=False, clutter=bool(clutter))


def studio_pose(background_seed: int = 0) -> dict[str, Any]:
    """The RaFD-like frontal pose: the canvas is already the aligned crop."""
    return dict(x=0.5, y=CANONICAL_EYE_Y, scale=CANONICAL_FACE_FRACTION, angle=0.0,
                background_seed=int(background_seed), studio=True)


# ---------------------------------------------------------------------- counterfactuals

def counterfactual(params: dict | FaceParams, label_names: Sequence[str],
                   labels: Sequence[float]) -> FaceParams:
    """The same identity, pose and background with attributes taken from a label vector.

    ``label_names`` are CelebA attribute names (``Black_Hair``, ``Blond_Hair``, ``Brown_Hair``,
    ``Male``, ``Young``, ``Eyeglasses``, ``Smiling``) and/or RaFD expression names (a one-hot
    group); labels are 0/1 (or -1/1; anything > 0.5 is "on"). Names not in the vector keep
    their value. A hair colour switched off with no colour switched on becomes the first
    colour of ``HAIR_COLOURS`` the vector does not switch off.
    """
    p = params if isinstance(params, FaceParams) else FaceParams.from_dict(params)
    if len(label_names) != len(labels):
        raise ValueError(f"counterfactual: {len(label_names)} label names but {len(labels)} labels")
    on = {str(n): float(v) > 0.5 for n, v in zip(label_names, labels)}
    known = set(HAIR_ATTRIBUTES) | {"Male", "Young", "Eyeglasses", "Smiling"} | set(RAFD_EXPRESSIONS)
    unknown = [n for n in on if n not in known]
    if unknown:
        raise ValueError(f"counterfactual: the synthetic renderer does not draw {', '.join(unknown)}; "
                         f"it knows {', '.join(sorted(known))}")
    change: dict[str, Any] = {}
    hair_on = [HAIR_ATTRIBUTES[n] for n in HAIR_ATTRIBUTES if on.get(n)]
    hair_off = {HAIR_ATTRIBUTES[n] for n in HAIR_ATTRIBUTES if n in on and not on[n]}
    if len(hair_on) > 1:
        raise ValueError(f"counterfactual: hair colours are exclusive, got {', '.join(hair_on)}")
    if hair_on:
        change["hair"] = hair_on[0]
    elif p.hair in hair_off:
        left = [h for h in HAIR_COLOURS if h not in hair_off]
        if not left:
            raise ValueError("counterfactual: every hair colour is switched off")
        change["hair"] = left[0]
    for name, field in (("Male", "male"), ("Young", "young"), ("Eyeglasses", "eyeglasses")):
        if name in on:
            change[field] = on[name]
    if "Smiling" in on:
        if on["Smiling"]:
            change["expression"] = "happy"
        elif p.expression == "happy":
            change["expression"] = "neutral"
    expr_named = [n for n in RAFD_EXPRESSIONS if n in on]
    if expr_named:
        chosen = [n for n in expr_named if on[n]]
        if len(chosen) != 1:
            raise ValueError(f"counterfactual: expressions are one-hot; got {len(chosen)} switched on "
                             f"({', '.join(chosen) or 'none'})")
        change["expression"] = chosen[0]
    return dataclasses.replace(p, **change)


def celeba_labels(p: FaceParams, names: Sequence[str] = CELEBA_LIST_ATTRIBUTES) -> list[int]:
    """0/1 values of CelebA attribute names for a face."""
    value = {"Black_Hair": p.hair == "black", "Blond_Hair": p.hair == "blond",
             "Brown_Hair": p.hair == "brown", "Male": p.male, "Young": p.young,
             "Eyeglasses": p.eyeglasses, "Smiling": p.expression == "happy"}
    return [int(value[n]) for n in names]
