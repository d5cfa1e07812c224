"""The synthetic embedded dataset: real formats, determinism, counterfactuals, visible attributes."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from stargan.config import SyntheticConfig
from stargan.data.formats import read_dataset
from stargan.data.imageio import decode_image
from stargan.data.synthetic import (CELEBA_ATTRIBUTES, RAFD_EXPRESSIONS, FaceParams, counterfactual, render,
                                    write_celeba_like, write_rafd_like)

SMALL = SyntheticConfig(seed=3, celeba_images=40, rafd_identities=3, image_size=48)
# big enough to fit a classifier on, small enough to render in a couple of seconds
CLASSIFY = SyntheticConfig(seed=5, celeba_images=400, rafd_identities=30, image_size=64,
                           val_fraction=0.0, test_fraction=0.3)


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "celeba"
    write_celeba_like(root, SMALL)
    return root


@pytest.fixture(scope="module")
def rafd(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "rafd"
    write_rafd_like(root, SMALL)
    return root


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_config_same_bytes_and_rewrite_replaces(celeba, rafd, tmp_path):
    write_celeba_like(tmp_path / "c", SMALL)
    write_rafd_like(tmp_path / "r", SMALL)
    assert _files(tmp_path / "c") == _files(celeba)
    assert _files(tmp_path / "r") == _files(rafd)
    (tmp_path / "c" / "stale.txt").write_text("old")
    write_celeba_like(tmp_path / "c", dataclasses.replace(SMALL, seed=4))
    assert not (tmp_path / "c" / "stale.txt").exists()
    assert _files(tmp_path / "c") != _files(celeba)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "r"]      # no staging folders left


def test_drawing_on_several_processes_writes_the_same_bytes(tmp_path, monkeypatch):
    """The writers draw on every core; a set's bytes must not depend on how many there are."""
    import stargan.data.synthetic.writers as writers

    cfg = dataclasses.replace(SMALL, celeba_images=80, rafd_identities=10)     # 80 faces each: above the
    monkeypatch.setattr(writers.os, "cpu_count", lambda: 1)                    # pool's 64-face threshold
    write_celeba_like(tmp_path / "c1", cfg)
    write_rafd_like(tmp_path / "r1", cfg)
    pools, real_pool = [], writers.ProcessPoolExecutor
    monkeypatch.setattr(writers.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(writers, "ProcessPoolExecutor", lambda n, **kw: pools.append(n) or real_pool(n, **kw))
    write_celeba_like(tmp_path / "c2", cfg)
    write_rafd_like(tmp_path / "r2", cfg)
    assert pools == [2, 2]
    assert _files(tmp_path / "c1") == _files(tmp_path / "c2")
    assert _files(tmp_path / "r1") == _files(tmp_path / "r2")
    assert len(_files(tmp_path / "c2")) == 80 + 5 and len(_files(tmp_path / "r2")) == 80 + 1


def test_celeba_like_parses_with_true_labels_landmarks_and_splits(celeba):
    idx = read_dataset(celeba, "celeba", list(CELEBA_ATTRIBUTES), "celeba")
    assert len(idx.records) == SMALL.celeba_images and idx.label_kind == "multi"
    assert idx.records[0].key == "000001.jpg"
    by_split: dict[str, set[int]] = {}
    for r in idx.records:
        p = FaceParams.from_dict(r.extra)
        assert sum(r.labels[:3]) == 1, r.key                                # exclusive hair colour
        assert r.labels == (p.hair == "black", p.hair == "blond", p.hair == "brown", p.male, p.young)
        assert r.identity == p.identity
        by_split.setdefault(r.split, set()).add(r.identity)
        rgb = decode_image(r.path)
        assert rgb.shape == (48, 48, 3)
        _, lm = render(p, 48)
        np.testing.assert_array_equal(r.landmarks, np.round(lm))
        assert (r.landmarks >= 0).all() and (r.landmarks < 48).all()
        skin = np.asarray(p.skin, float)
        for x, y in r.landmarks[:2]:                                        # eyes are where the file says
            patch = rgb[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].reshape(-1, 3).astype(float)
            assert np.abs(patch - skin).sum(1).max() > 60, r.key
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    idents = [r.identity for r in idx.records]
    assert len(set(idents)) == SMALL.celeba_images // 4 and len(idents) > len(set(idents))
    other = read_dataset(celeba, "celeba", ["Eyeglasses", "Smiling"], "celeba")
    assert all(r.labels == (r.extra["eyeglasses"], r.extra["expression"] == "happy") for r in other.records)


def test_rafd_like_parses_with_eight_expressions_for_every_identity(rafd):
    idx = read_dataset(rafd, "rafd", [], "rafd")
    assert idx.label_names == list(RAFD_EXPRESSIONS) and idx.label_kind == "onehot"
    assert len(idx.records) == 8 * SMALL.rafd_identities
    seen = set()
    for r in idx.records:
        expr = r.key.split("/")[0]
        assert r.labels[RAFD_EXPRESSIONS.index(expr)] == 1 and sum(r.labels) == 1
        assert r.extra["expression"] == expr and r.identity == r.extra["identity"]
        gender = "male" if r.extra["male"] else "female"
        assert r.key == f"{expr}/Rafd090_{r.identity:02d}_Synthetic_{gender}_{expr}_frontal.jpg"
        seen.add((r.identity, expr))
    assert seen == {(i, e) for i in range(1, SMALL.rafd_identities + 1) for e in RAFD_EXPRESSIONS}


def test_stored_params_render_the_stored_image(celeba, rafd):
    for root in (celeba, rafd):
        row = json.loads((root / "list_synthetic_params.jsonl").read_text().splitlines()[5])
        img_dir = root / "img_celeba" if root == celeba else root
        p = FaceParams.from_dict(row["params"])
        assert FaceParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
        rgb, _ = render(row["params"], SMALL.image_size)
        assert np.abs(decode_image(img_dir / row["key"]).astype(int) - rgb).mean() < 3


def _face_params(**change) -> FaceParams:
    base = dict(identity=1, skin=(200, 160, 130), face_width=0.8, face_height=1.05, jaw=0.85, eye_spacing=0.95,
                eye_size=1.0, eye_colour=(60, 100, 160), nose_length=0.55, mouth_width=0.6, hairline=-0.5,
                hair_volume=0.1, hair_shade=1.0, clothes=(40, 90, 160), x=0.5, y=0.42, scale=0.26, angle=12.0,
                background_seed=99, studio=False, hair="black", male=False, young=True, eyeglasses=False,
                expression="neutral")
    return FaceParams(**{**base, **change})


def _diff(a, b):
    return np.abs(a.astype(int) - b.astype(int)).sum(2)


def test_counterfactual_changes_only_where_the_attribute_lives():
    p = _face_params()
    rgb, lm = render(p, 96)
    hair_cf = counterfactual(p.to_dict(), ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"],
                             [0, 1, 0, 0, 1])
    assert (hair_cf.hair, hair_cf.male, hair_cf.young) == ("blond", False, True)
    rgb_h, lm_h = render(hair_cf, 96)
    np.testing.assert_array_equal(lm, lm_h)
    changed = _diff(rgb, rgb_h) > 60
    eyes_y = lm[:2, 1].mean()
    assert changed[: int(eyes_y)].sum() > 150                               # the crown above the eyes
    assert changed.sum() < 0.35 * changed.size and not changed[:, :8].any()  # face and background kept

    expr_cf = counterfactual(p.to_dict(), list(RAFD_EXPRESSIONS), [0, 0, 0, 0, 0, 0, 0, 1])
    assert expr_cf.expression == "surprised" and expr_cf.hair == "black"
    rgb_e, lm_e = render(expr_cf, 96)
    np.testing.assert_array_equal(lm, lm_e)
    mouth = lm[3:].mean(0)
    yy, xx = np.mgrid[:96, :96]
    near_mouth = np.hypot(xx - mouth[0], yy - mouth[1]) < 0.6 * np.linalg.norm(lm[4] - lm[3])
    changed = _diff(rgb, rgb_e) > 60
    assert changed[near_mouth].mean() > 0.2
    centre = p.to_canvas(96) @ [0.0, 0.3, 1.0]                             # the head's centre
    unit = 96 * p.scale
    assert not changed[np.hypot(xx - centre[0], yy - centre[1]) > 1.25 * unit].any()   # brows, eyes, mouth only


def test_male_is_drawn_below_the_eyes_and_hair_length_is_the_identitys(celeba):
    """Male changes the beard, brows and lips, never the hair's outline (a change of outline is what
    a small residual G learns slowest); hair length is an identity trait, drawn independently of sex,
    so a translation must keep it. Rows written before the trait existed draw short hair for men."""
    for short in (False, True):
        p = _face_params(short_hair=short)
        rgb, lm = render(p, 96)
        rgb_m, _ = render(counterfactual(p.to_dict(), ["Male"], [1]), 96)
        changed = _diff(rgb, rgb_m) > 60
        eyes_y = int(lm[:2, 1].max())
        assert changed[eyes_y + 4:].sum() > 100                            # the jaw's beard shadow
        assert changed[: int(lm[:2, 1].min()) - 12].sum() == 0             # crown and hair untouched
    legacy = _face_params(male=True)
    assert legacy.short_hair is None
    np.testing.assert_array_equal(render(legacy, 64)[0], render(_face_params(male=True, short_hair=True), 64)[0])
    rows = [json.loads(line)["params"] for line in (celeba / "list_synthetic_params.jsonl").read_text().splitlines()]
    pairs = {(r["male"], r["short_hair"]) for r in rows}
    assert pairs == {(False, False), (False, True), (True, False), (True, True)}, pairs


def test_counterfactual_label_vectors():
    p = _face_params(hair="brown", expression="happy")
    assert counterfactual(p, ["Smiling"], [0]).expression == "neutral"
    assert counterfactual(p, ["Brown_Hair"], [-1]).hair == "black"          # -1/1 values and "not brown"
    assert counterfactual(p, ["Male", "Young", "Eyeglasses"], [1, 0, 1]) == dataclasses.replace(
        p, male=True, young=False, eyeglasses=True)
    with pytest.raises(ValueError, match="exclusive"):
        counterfactual(p, ["Black_Hair", "Blond_Hair"], [1, 1])
    with pytest.raises(ValueError, match="one-hot"):
        counterfactual(p, list(RAFD_EXPRESSIONS), [0] * 8)
    with pytest.raises(ValueError, match="Bald"):
        counterfactual(p, ["Bald"], [1])


# ------------------------------------------------------------------ visible at 32 px

def _aligned32(rgb: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Similarity-align to the canonical frame (eyes at 40%, eye-to-mouth 0.45 x side) at 32 px."""
    d = 0.45 * 32
    template = np.array([[-0.48, 0], [0.48, 0], [0, 0.56], [-0.3, 1], [0.3, 1]]) * d + [15.5, 0.4 * 32 - 0.5]
    m, _ = cv2.estimateAffinePartial2D(lm.astype(np.float32), template.astype(np.float32), method=cv2.LMEDS)
    return cv2.warpAffine(rgb, m, (32, 32), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def _ridge_accuracy(x_train, y_train, x_test, y_test, classes: int) -> float:
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-3
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    targets = np.eye(classes)[y_train]
    w = a.T @ np.linalg.solve(a @ a.T + len(a) * np.eye(len(a)), targets)    # dual-form ridge
    return float(((b @ w).argmax(1) == y_test).mean())


def test_attributes_are_visible_at_32px(tmp_path):
    write_celeba_like(tmp_path / "c", CLASSIFY)
    idx = read_dataset(tmp_path / "c", "celeba", list(CELEBA_ATTRIBUTES), "celeba")
    x = np.stack([_aligned32(decode_image(r.path), r.landmarks) for r in idx.records]).reshape(len(idx.records), -1)
    y = np.array([r.labels for r in idx.records])
    test = np.array([r.split == "test" for r in idx.records])                # identity-disjoint
    hair = y[:, :3].argmax(1)
    accuracies = {"hair": _ridge_accuracy(x[~test], hair[~test], x[test], hair[test], 3)}
    for j, name in ((3, "Male"), (4, "Young")):
        accuracies[name] = _ridge_accuracy(x[~test], y[~test, j], x[test], y[test, j], 2)
    assert accuracies["hair"] > 0.9 and accuracies["Male"] > 0.9 and accuracies["Young"] > 0.8, accuracies

    write_rafd_like(tmp_path / "r", CLASSIFY)
    ridx = read_dataset(tmp_path / "r", "rafd", [], "rafd")
    x = np.stack([cv2.resize(decode_image(r.path), (32, 32), interpolation=cv2.INTER_AREA)
                  for r in ridx.records]).reshape(len(ridx.records), -1)
    y = np.array([r.labels.index(1) for r in ridx.records])
    test = np.array([r.identity > 20 for r in ridx.records])
    acc = _ridge_accuracy(x[~test], y[~test], x[test], y[test], 8)
    assert acc > 0.8, acc
