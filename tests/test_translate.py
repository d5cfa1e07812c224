"""`stargan translate`: outputs and grid, and one-line errors (exit 2) for every bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stargan.cli import main
from stargan.data.imageio import decode_image, write_image
from stargan.data.synthetic import render
from test_export import make_checkpoint
from tiny_project import REPO, build_data, env, write_params


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {k: make_checkpoint(root / k, k) for k in ("v1", "v2")}


def face_png(path: Path, size: int = 96) -> Path:
    """A synthetic "photo" the Haar detector finds a face in, as it would in a user's photo (it finds
    one in about a third of the cartoon faces, which carry no landmarks for it)."""
    from stargan.config import SyntheticConfig
    from stargan.data.detect import detect_face
    from stargan.data.synthetic.writers import _celeba_faces

    for params, _ in _celeba_faces(SyntheticConfig(celeba_images=20, image_size=size)):
        rgb = render(params, size)[0]
        if detect_face(rgb) is not None:
            write_image(path, rgb)
            return path
    raise AssertionError("no synthetic face the detector finds")


def noise_png(path: Path) -> Path:
    write_image(path, np.random.default_rng(0).integers(0, 256, (90, 90, 3), dtype=np.uint8))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["translate", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_v1_translate_writes_outputs_and_a_grid(models, tmp_path, capsys):
    img = face_png(tmp_path / "photo.png")
    rc, out, err = run(capsys, "--model", str(models["v1"]), "--input", str(img), "--target", "Blond_Hair,Male",
                       "--target", "rafd/happy", "--no-align", "--out", str(tmp_path / "out"))
    assert rc == 0, err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["photo_Blond_Hair+Male.png", "photo_grid.png", "photo_rafd+happy.png"]
    s = 16
    assert decode_image(tmp_path / "out" / "photo_Blond_Hair+Male.png").shape == (s, s, 3)
    grid = decode_image(tmp_path / "out" / "photo_grid.png")
    assert grid.shape == (s + 4, 3 * (s + 2) + 2, 3)      # input | 2 outputs, 2 px padding


def test_v2_translate_folder_seed_and_reference(models, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    face_png(folder / "a.png")
    face_png(folder / "b.jpg")
    ref = face_png(tmp_path / "ref.png")
    rc, out, err = run(capsys, "--model", str(models["v2"]), "--input", str(folder), "--target", "Blond_Hair,Black_Hair",
                       "--seed", "7", "--no-align", "--out", str(tmp_path / "o1"))
    assert rc == 0, err
    assert {p.name for p in (tmp_path / "o1").iterdir()} == {
        "a_Blond_Hair.png", "a_Black_Hair.png", "a_grid.png", "b_Blond_Hair.png", "b_Black_Hair.png", "b_grid.png"}
    rc, out, err = run(capsys, "--model", str(models["v2"]), "--input", str(folder / "a.png"), "--target", "Brown_Hair",
                       "--reference", str(ref), "--no-align", "--out", str(tmp_path / "o2"))
    assert rc == 0 and "reference:ref.png" in out, err


@pytest.mark.parametrize("case", ["no_face", "unknown_domain", "v1_with_reference", "v1_with_seed", "unreadable",
                                  "unknown_v2_domain", "missing_input"])
def test_errors_are_one_line_exit_2(models, tmp_path, capsys, case):
    face, noise = face_png(tmp_path / "face.png"), noise_png(tmp_path / "noise.png")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    v1, v2 = str(models["v1"]), str(models["v2"])
    argv, expect = {
        "no_face": (["--model", v1, "--input", str(noise), "--target", "Male"], f"{noise}: no face found"),
        "unknown_domain": (["--model", v1, "--input", str(face), "--target", "Purple_Hair", "--no-align"],
                           "unknown domain name(s) Purple_Hair; this model knows: celeba/Black_Hair"),
        "v1_with_reference": (["--model", v1, "--input", str(face), "--target", "Male", "--reference", str(face)],
                              "--reference needs a StarGAN v2 model; this is a v1 model"),
        "v1_with_seed": (["--model", v1, "--input", str(face), "--target", "Male", "--seed", "1"],
                         "--seed needs a StarGAN v2 model"),
        "unreadable": (["--model", v1, "--input", str(bad), "--target", "Male"], f"unreadable image: {bad}"),
        "unknown_v2_domain": (["--model", v2, "--input", str(face), "--target", "Male", "--no-align"],
                              "unknown domain name 'Male'; this model knows: Black_Hair, Blond_Hair, Brown_Hair"),
        "missing_input": (["--model", v1, "--input", str(tmp_path / "nope.png"), "--target", "Male"],
                          "nope.png: no such file or folder"),
    }[case]
    rc, out, err = run(capsys, *argv, "--out", str(tmp_path / "out"))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stargan translate: error: ") and expect in lines[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_translate_with_a_model_trained_by_the_tiny_project(tmp_path):
    """Real path: download/align/shard, `stargan train --local` in a subprocess, then translate."""
    root = build_data(tmp_path / "proj")
    train = subprocess.run([sys.executable, "-m", "stargan.cli", "train", "--local"], cwd=root, env=env(),
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    img = face_png(tmp_path / "photo.png")
    proc = subprocess.run([sys.executable, "-m", "stargan.cli", "translate", "--model", "models/train/checkpoint.pt",
                           "--input", str(img), "--target", "Blond_Hair", "--no-align", "--out", "out"],
                          cwd=root, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = decode_image(root / "out" / "photo_Blond_Hair.png")
    assert out.shape == (16, 16, 3) and out.std() > 0
    noise = noise_png(tmp_path / "noise.png")
    proc = subprocess.run([sys.executable, "-m", "stargan.cli", "translate", "--model", "models/train",
                           "--input", str(noise), "--target", "Blond_Hair"], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "no face found (pass --no-align if the image is already an aligned face crop)")
    assert "Traceback" not in proc.stderr
