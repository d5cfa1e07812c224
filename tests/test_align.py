"""Stage 2 — align: geometry of the three methods, and the dataset stage's outputs."""
import json
import sys

import cv2
import numpy as np
import pytest

from stargan.config import AlignConfig, DatasetSpec
from stargan.data import align as A
from stargan.data.align import AlignError, AlignRejected, align_dataset, align_face, apply_matrix, template
from stargan.data.detect import Detection
from stargan.data.formats import DatasetIndex, RawRecord
from stargan.data.imageio import decode_image, encode_png


def draw_face(landmarks: np.ndarray, h: int = 160, w: int = 200, seed: int = 0) -> np.ndarray:
    """A face-like canvas: skin ellipse, two dark eye discs, a nose dot, two mouth-corner dots."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    lm = np.asarray(landmarks, float)
    d = np.linalg.norm((lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2)
    c = (lm[0] + lm[1] + lm[3] + lm[4]) / 4
    ang = np.degrees(np.arctan2(*(lm[1] - lm[0])[::-1]))
    S = 16  # subpixel drawing
    def P(p):
        return tuple(int(round(v * S)) for v in p)
    cv2.ellipse(img, P(c), (int(1.3 * d * S), int(1.7 * d * S)), ang, 0, 360, (225, 190, 160), -1, cv2.LINE_AA, 4)
    for i, (r, col) in enumerate([(0.18, 20), (0.18, 20), (0.08, 120), (0.07, 60), (0.07, 60)]):
        cv2.circle(img, P(lm[i]), int(r * d * S), (col, col, col), -1, cv2.LINE_AA, 4)
    return img


def similarity(angle_deg: float, scale: float, t) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), t[0]], [scale * np.sin(a), scale * np.cos(a), t[1]]])


def dark_centroid(img: np.ndarray, centre, radius: float) -> np.ndarray:
    """Centroid of the darkness inside a disc around ``centre`` (locates an eye disc)."""
    g = img.mean(2)
    yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]]
    mask = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
    wgt = np.clip(150 - g, 0, None) * mask
    return np.array([(wgt * xx).sum(), (wgt * yy).sum()]) / wgt.sum()


def test_template_geometry_matches_celeba():
    t = template(178, 41 / 178)
    # face_fraction 41/178 reproduces CelebA's official 178 crop of the mean aligned landmarks (y - 20)
    np.testing.assert_allclose(t, [[69, 91], [108, 91], [88.5, 115], [72.5, 132], [104.5, 132]], atol=1e-9)
    t = template(64, 0.45)
    assert t[0, 1] == t[1, 1] and abs((t[0, 0] + t[1, 0]) / 2 - 31.5) < 1e-9
    assert abs(np.linalg.norm((t[3] + t[4]) / 2 - (t[0] + t[1]) / 2) - 0.45 * 64) < 1e-9


@pytest.mark.parametrize("angle,scale,t", [(0, 1.0, (60, 30)), (17, 1.6, (90, 10)), (-25, 2.3, (40, 0)),
                                           (180, 1.2, (150, 140))])
def test_landmark_alignment_maps_landmarks_to_template(angle, scale, t):
    size, f = 64, 0.45
    canon = template(100, 0.45) * 0.6        # a face ~27 px eye-to-mouth, then moved around
    raw_lm = apply_matrix(similarity(angle, scale, t), canon)
    img = draw_face(raw_lm)
    out = align_face(img, size, raw_lm, face_fraction=f)
    assert out.method == "landmarks" and out.image.shape == (size, size, 3) and out.image.dtype == np.uint8
    mapped = apply_matrix(out.matrix, raw_lm)
    tpl = template(size, f)
    assert np.abs(mapped - tpl).max() < 1.0
    assert abs(mapped[0, 1] - mapped[1, 1]) < 0.1                      # eyes level
    # the image agrees with the matrix: the dark eye discs sit on the template's eyes
    for i in (0, 1):
        c = dark_centroid(out.image, tpl[i], 0.12 * f * size + 1)
        assert np.linalg.norm(c - tpl[i]) < 1.0, (i, c, tpl[i])


def test_matrix_maps_a_marker_pixel_consistently():
    lm = apply_matrix(similarity(30, 3.0, (80, 10)), template(100, 0.45) * 0.5)
    img = draw_face(lm, 200, 220)
    marker = np.array([101.0, 77.0])
    img[75:80, 99:104] = (255, 0, 255)     # 5x5 magenta block centred on the marker
    out = align_face(img, 48, lm, face_fraction=0.45)
    expect = apply_matrix(out.matrix, marker[None])[0]
    mag = (out.image[..., 0].astype(int) + out.image[..., 2] - 2 * out.image[..., 1].astype(int)).clip(0)
    ys, xs = np.nonzero(mag > mag.max() * 0.5)
    got = np.array([(xs * mag[ys, xs]).sum(), (ys * mag[ys, xs]).sum()]) / mag[ys, xs].sum()
    assert np.linalg.norm(got - expect) < 1.0, (got, expect)


def test_warp_equals_plain_warpaffine_when_not_shrinking():
    img = np.random.default_rng(3).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    m = similarity(10, 1.3, (-5, -8))
    ref = cv2.warpAffine(img, m, (40, 40), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(A.warp(img, m, 40), ref)


def test_big_shrink_is_antialiased():
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[:, ::2] = 255                                      # 1-px stripes: pure aliasing bait
    m = similarity(0, 0.1, (0, 0))
    out = A.warp(stripes, m, 32)
    assert np.abs(out[1:-1, 1:-1].astype(float) - 127.5).max() < 6       # a flat grey, not moire
    plain = cv2.warpAffine(stripes, m, (32, 32), flags=cv2.INTER_LINEAR)
    assert np.abs(plain[1:-1, 1:-1].astype(float) - 127.5).max() > 100   # what plain bilinear gives


def test_centre_crop_matrix_and_image():
    h, w = 80, 60
    img = np.zeros((h, w, 3), np.uint8)
    img[39:42, 29:32] = 255                                    # marker centred at (30, 40)
    out = align_face(img, 25, crop=50)
    assert out.method == "centre_crop"
    # crop offset x0 = 5, y0 = 15, scale 0.5, half-pixel centres
    np.testing.assert_allclose(out.matrix, [[0.5, 0, (0.5 - 5) * 0.5 - 0.5], [0, 0.5, (0.5 - 15) * 0.5 - 0.5]])
    ex, ey = apply_matrix(out.matrix, [[30, 40]])[0]
    ys, xs = np.nonzero(out.image[..., 0] > 0)
    wgt = out.image[ys, xs, 0].astype(float)
    assert abs((xs * wgt).sum() / wgt.sum() - ex) < 0.3 and abs((ys * wgt).sum() / wgt.sum() - ey) < 0.3
    # same size crop: a pure translation, pixels copied
    same = align_face(img, 60, crop=0)
    np.testing.assert_array_equal(same.image, img[10:70])
    np.testing.assert_allclose(same.matrix, [[1, 0, 0], [0, 1, -10]], atol=1e-12)
    with pytest.raises(AlignRejected, match="smaller than"):
        align_face(img, 25, crop=70)


def test_landmark_rejections():
    img = np.zeros((100, 100, 3), np.uint8)
    good = template(100, 0.45)
    with pytest.raises(AlignRejected, match="outside the image"):
        align_face(img, 32, good + [0, 60])
    with pytest.raises(AlignRejected, match="too small"):
        align_face(img, 32, (good - 50) * 0.1 + 50, min_face=24)
    with pytest.raises(AlignRejected, match="mirrored"):
        align_face(img, 32, good[[1, 0, 2, 4, 3]])


def test_detector_rejects_noise():
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    with pytest.raises(AlignRejected, match="no face found"):
        align_face(noise, 32)
    with pytest.raises(AlignRejected, match="no face found"):
        align_face(noise[:10, :10], 32)                        # smaller than min_face


def test_detector_plumbing(monkeypatch):
    img = np.zeros((200, 200, 3), np.uint8)
    eyes = np.array([[80.0, 90.0], [120.0, 100.0]])
    monkeypatch.setattr(A, "detect_face", lambda rgb, min_face: Detection((60, 60, 90, 90), eyes))
    out = align_face(img, 64)
    assert out.method == "detector"
    np.testing.assert_allclose(apply_matrix(out.matrix, eyes), template(64, 0.45)[:2], atol=1e-9)
    monkeypatch.setattr(A, "detect_face", lambda rgb, min_face: Detection((60, 60, 90, 90), None))
    out = align_face(img, 64)
    assert out.method == "detector_box"
    tpl = template(64, 0.45)
    box_centre = apply_matrix(out.matrix, [[60 + 45 - 0.5, 60 + 45 - 0.5]])[0]
    assert abs(box_centre[0] - 31.5) < 1e-9                    # face centred horizontally
    assert abs(out.matrix[0, 0] * 90 - A.BOX_WIDTH_D * 0.45 * 64) < 1e-9 and out.matrix[0, 1] == 0
    assert box_centre[1] > tpl[0, 1]                           # box centre below the eye line


# ------------------------------------------------------------------------------- dataset

def _fake_dataset(root, n=6, with_landmarks=True):
    (root / "img").mkdir(parents=True)
    records = []
    for i in range(n):
        lm = apply_matrix(similarity(8 * i - 20, 1.0 + 0.1 * i, (50 + 3 * i, 30)), template(100, 0.45) * 0.6)
        key = f"{i:06d}.jpg" if i % 2 else f"sub/{i:06d}.png"
        path = root / "img" / key.replace("/", "_")
        data = encode_png(draw_face(lm, seed=i))
        if i == 3:
            data = data[: len(data) // 3]                      # truncated download
        path.write_bytes(data)
        records.append(RawRecord(key=key, path=path, labels=(i % 2, 1 - i % 2), split="train" if i < 4 else "test",
                                 landmarks=lm.astype(np.float32) if with_landmarks else None, identity=i,
                                 extra={"seed": i}))
    return DatasetIndex("toy", "celeba", ["A", "B"], "multi", records[::-1])


def _tree_bytes(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_align_dataset_outputs_rejections_and_determinism(tmp_path):
    index = _fake_dataset(tmp_path / "raw")
    cfg = AlignConfig(image_size=32, face_fraction=0.45, workers=1, min_face=24)
    out = tmp_path / "aligned" / "toy"
    rep = align_dataset(index, out, cfg, DatasetSpec())
    assert rep["total"] == 6 and rep["accepted"] == 5 and rep["methods"] == {"landmarks": 5}
    assert rep["seconds"] > 0 and rep["images_per_s"] > 0
    (rej,) = rep["rejected"]
    assert rej["key"] == "000003.jpg" and "truncated" in rej["reason"] and rej["path"].endswith("000003.jpg")
    rows = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in rows]
    assert keys == sorted(keys) and len(keys) == 5 and "000003.jpg" not in keys
    r0 = rows[keys.index("sub/000000.png")]
    assert r0["file"] == "images/sub__000000.png" and r0["labels"] == [0, 1] and r0["identity"] == 0
    assert r0["split"] == "train" and r0["method"] == "landmarks" and r0["extra"] == {"seed": 0}
    lm0 = next(r for r in index.records if r.key == "sub/000000.png").landmarks
    np.testing.assert_allclose(apply_matrix(r0["matrix"], lm0), template(32, 0.45), atol=1e-3)
    for r in rows:
        img = decode_image(out / r["file"])
        assert img.shape == (32, 32, 3)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(r["file"][7:] for r in rows)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label_names"] == ["A", "B"] and meta["image_size"] == 32 and meta["layout"] == "celeba"
    assert meta["counts"]["accepted"] == 5 and meta["counts"]["per_split"] == {"test": 2, "train": 3}
    assert json.loads((out / "report.json").read_text())["rejected"] == rep["rejected"]
    first = _tree_bytes(out)
    # again, with 2 worker processes, over the existing folder: the same bytes, no leftovers
    rep2 = align_dataset(index, out, cfg, DatasetSpec(), workers=2)
    assert rep2["workers"] == 2 and _tree_bytes(out) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]


def test_align_dataset_all_rejected_is_an_error_and_leaves_nothing(tmp_path):
    index = _fake_dataset(tmp_path / "raw", n=2, with_landmarks=False)
    for r in index.records:
        r.path.write_bytes(b"not an image")
    out = tmp_path / "aligned" / "toy"
    with pytest.raises(AlignError, match="all 2 images were rejected"):
        align_dataset(index, out, AlignConfig(image_size=32, workers=1), DatasetSpec())
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_centre_crop_dataset_uses_official_crop(tmp_path):
    index = _fake_dataset(tmp_path / "raw", n=2)
    spec = DatasetSpec(aligned=True)          # celeba layout: 178 crop, clamped to these 160 px images
    rep = align_dataset(index, tmp_path / "out", AlignConfig(image_size=40, workers=1), spec)
    assert rep["methods"] == {"centre_crop": 2}
    row = json.loads((tmp_path / "out" / "index.jsonl").read_text().splitlines()[0])
    np.testing.assert_allclose(row["matrix"], A.centre_crop_matrix(200, 160, 160, 40), atol=1e-9)
    assert A.official_crop(DatasetSpec(crop=100), "rafd") == 100 and A.official_crop(spec, "rafd") == 0


def test_pipeline_script_on_celeba_layout(tmp_path, capsys):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from pipelines import align as stage

    raw = tmp_path / "data" / "raw" / "toy"
    (raw / "img_celeba").mkdir(parents=True)
    names, lms = [], []
    for i in range(3):
        lm = apply_matrix(similarity(5 * i, 1.0, (60, 30)), template(100, 0.45) * 0.6)
        name = f"{i + 1:06d}.jpg"
        (raw / "img_celeba" / name).write_bytes(encode_png(draw_face(lm, seed=i)))
        names.append(name)
        lms.append(lm)
    (raw / "list_attr_celeba.txt").write_text(
        "3\nMale Young\n" + "".join(f"{n}  1 -1\n" for n in names))
    (raw / "list_landmarks_celeba.txt").write_text(
        "3\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(n + " " + " ".join(f"{v:.0f}" for v in lm.ravel()) + "\n" for n, lm in zip(names, lms)))
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tmp_path / 'data'}\n  datasets:\n    toy: {{source: local, layout: celeba, "
                      f"path: {raw}, attributes: [Male, Young]}}\nalign: {{image_size: 32, workers: 1}}\n")
    from stargan.stage import run_stage

    assert run_stage("align", stage.main, ["--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "toy: 3 accepted, 0 rejected of 3" in out and "report.json" in out
    rows = (tmp_path / "data" / "aligned" / "toy" / "index.jsonl").read_text().splitlines()
    assert [json.loads(r)["labels"] for r in rows] == [[1, 0]] * 3

    params.write_text("align: {image_size: 7}\n")
    assert run_stage("align", stage.main, ["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "align.image_size" in err and "Traceback" not in err
