"""Bad input at the joints is one clear line (exit status 2, no traceback) and loses nothing: a
params value the networks cannot be built for, damaged or foreign checkpoints, a checkpoint the
params do not describe, a folder of photos with one that has no face. Each runs the `stargan`
command as a user does."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stargan.cli import main
from test_export import make_checkpoint
from test_translate import face_png, noise_png
from tiny_project import env, write_params


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(err: str, prefix: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("over, fragment", [
    (["train.image_size=20"], "train.image_size: 20 does not fit StarGAN v1 with train.v1.d_repeat_num=5: it must "
                              "be a multiple of 32"),
    (["train.image_size=18", "train.v1.d_repeat_num=1"], "train.image_size: 18 does not fit StarGAN v1 with "
                                                         "train.v1.d_repeat_num=1: it must be a multiple of 4"),
    (["train.model=v2", "train.datasets=[celeba]", "train.image_size=48"],
     "train.image_size: 48 does not fit StarGAN v2: it must be a power of two"),
    (["train.v1.lambda_rec=lots"], "train.v1.lambda_rec: expected a number or 'tuned'"),
    (["tune.enabled=false"], "tune.enabled: no longer a setting: the sweep runs for the loss weights set to 'tuned'"),
])
def test_check_params_refuses_what_training_cannot_build(tmp_path, capsys, over, fragment):
    """Before, image_size 20 passed check-params and training died with a traceback in D."""
    params = write_params(tmp_path, {"train": {"v1": {"d_repeat_num": 5}}})
    args = ["check-params", "--params", str(params)]
    for o in over:
        args += ["-S", o]
    rc, out, err = cli(capsys, *args)
    assert rc == 2
    assert fragment in one_error_line(err, "stargan check-params: error: ")


def test_sizes_check_params_accepts_are_sizes_the_networks_build_for(tmp_path, capsys):
    from stargan.config import config_from_dict
    from stargan.models.v1 import Discriminator, Generator
    from stargan.models.v2 import Discriminator as D2

    for size in (32, 64, 96):
        cfg = config_from_dict({"train": {"image_size": size, "v1": {"d_repeat_num": 5}}})
        x = torch.zeros(1, 3, size, size)
        assert Generator(8, 5, 1)(x, torch.zeros(1, 5)).shape == x.shape
        assert Discriminator(cfg.train.image_size, 8, 5, 5)(x)[0].shape[0] == 1
    D2(img_size=32, num_domains=2, max_conv_dim=16)(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))


@pytest.fixture()
def project(tmp_path):
    ckpt = make_checkpoint(tmp_path / "proj", "v1")
    return tmp_path / "proj", ckpt


@pytest.mark.parametrize("case, fragment", [
    ("empty", "empty file (0 bytes)"),
    ("no_step", "damaged stargan-checkpoint/1 file: 'step' missing"),
    ("pickle", "refused to load: not a safe stargan checkpoint (weights-only load failed"),
    ("truncated", "refused to load: not a safe stargan checkpoint"),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(project, capsys, case, fragment):
    root, good = project
    bad = root / f"{case}.pt"
    if case == "empty":
        bad.touch()
    elif case == "no_step":
        payload = torch.load(good, weights_only=True)
        del payload["step"]
        torch.save(payload, bad)
    elif case == "pickle":
        torch.save({"format": "stargan-checkpoint/1", "step": 1, "obj": shutil.Error("x")}, bad)
    else:
        bad.write_bytes(good.read_bytes()[:4096])
    before = {p.name for p in root.rglob("*")}
    rc, out, err = cli(capsys, "export", "--params", str(root / "params.yaml"), "--checkpoint", str(bad), "--no-register")
    assert rc == 2
    assert one_error_line(err, "stargan export: error: ").startswith(f"stargan export: error: {bad}: {fragment}")
    assert {p.name for p in root.rglob("*")} == before, "a refused checkpoint writes nothing"


def test_export_refuses_a_checkpoint_the_params_do_not_describe(project, tmp_path, capsys):
    """A v2 checkpoint with v1 params was exported (and registered under the v1 params) silently."""
    root, _ = project
    v2 = make_checkpoint(tmp_path / "other", "v2")
    rc, out, err = cli(capsys, "export", "--params", str(root / "params.yaml"), "--checkpoint", str(v2), "--no-register")
    assert rc == 2
    line = one_error_line(err, "stargan export: error: ")
    assert f"cannot export {v2} with these params" in line and "train.model: checkpoint has 'v2', params have 'v1'" in line
    assert not (root / "models" / "export").exists()


def test_translate_a_folder_goes_past_a_photo_without_a_face(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "proj", "v1")
    photos = tmp_path / "photos"
    photos.mkdir()
    face_png(photos / "a.png", size=160)
    noise_png(photos / "b_noise.png")
    face_png(photos / "c.png", size=160)
    rc, out, err = cli(capsys, "translate", "--model", str(ckpt), "--input", str(photos), "--target", "Male",
                       "--out", str(tmp_path / "out"))
    assert rc == 1, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_Male.png", "a_Male_crop.png", "a_grid.png", "c_Male.png", "c_Male_crop.png", "c_grid.png"]
    lines = err.strip().splitlines()
    assert lines[0] == f"stargan translate: skipped: {photos / 'b_noise.png'}: no face found " \
                       "(pass --no-align if the image is already an aligned face crop)"
    assert lines[-1] == "stargan translate: translated 2 of 3 photos; 1 skipped (listed above)"
    assert "Traceback" not in err


def test_translate_pastes_the_face_back_into_the_photo(tmp_path, capsys):
    """The output is the whole photo with the translated face blended in (the crop beside it);
    pixels outside the face crop's footprint are the photo's own, and files are 0644."""
    import cv2

    from stargan.data.imageio import decode_image
    from stargan.inference import load_model
    from stargan.translate import prepare

    ckpt = make_checkpoint(tmp_path / "proj", "v1")
    photo_path = face_png(tmp_path / "photo.png", size=160)
    rc, out, err = cli(capsys, "translate", "--model", str(ckpt), "--input", str(photo_path), "--target", "Male",
                       "--out", str(tmp_path / "out"))
    assert rc == 0, err
    photo, pasted = decode_image(photo_path), decode_image(tmp_path / "out" / "photo_Male.png")
    crop = decode_image(tmp_path / "out" / "photo_Male_crop.png")
    assert pasted.shape == photo.shape and crop.shape == (16, 16, 3)
    matrix = prepare(photo_path, load_model(ckpt)).face.matrix
    footprint = cv2.warpAffine(np.ones((16, 16), np.uint8), cv2.invertAffineTransform(matrix), photo.shape[1::-1],
                               flags=cv2.INTER_NEAREST)
    near = cv2.dilate(footprint, np.ones((3, 3), np.uint8)) > 0
    assert near.mean() < 0.5, "the face is a part of the photo"
    assert np.array_equal(pasted[~near], photo[~near]), "unchanged away from the face"
    assert np.abs(pasted[footprint > 0].astype(int) - photo[footprint > 0]).mean() > 1, "the face is replaced"
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in (tmp_path / "out").iterdir())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from tiny_project import build_data

    return build_data(tmp_path_factory.mktemp("shards") / "proj")


def _damage(root: Path, dataset: str, how: str) -> Path:
    """Flip one byte in the middle of (or cut the end off) the dataset's first train shard."""
    path = sorted((root / "data" / "shards" / dataset).glob("train-*.parquet"))[0]
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    return path


@pytest.mark.slow
def test_damaged_shards_are_refused_by_train_and_bench_in_one_line(shards, tmp_path):
    """Before: a flipped byte in a JPEG shard trained silently on a damaged image, in a PNG shard it
    killed training steps later with ~40 lines of traceback naming no file; `stargan bench data` on
    a truncated shard printed a bare pyarrow traceback."""
    root = tmp_path / "proj"
    shutil.copytree(shards, root)
    bad = _damage(root, "rafd", "flip")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "pipelines" / "train.py")],
                          cwd=root, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert one_error_line(proc.stderr, "[train] error: ").startswith(
        f"[train] error: {bad}: sha256 differs from manifest.json")
    assert not (root / "models" / "train").exists() and not (root / "mlruns.db").exists(), \
        "refused before Ray or MLflow started"
    shutil.rmtree(root)
    shutil.copytree(shards, root)
    bad = _damage(root, "celeba", "truncate")
    proc = subprocess.run([sys.executable, "-m", "stargan.cli", "bench", "data", "--out", str(tmp_path / "b.json")],
                          cwd=root, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not (tmp_path / "b.json").exists()
    assert one_error_line(proc.stderr, "stargan bench: error: ").startswith(
        f"stargan bench: error: {bad}: sha256 differs from manifest.json")
