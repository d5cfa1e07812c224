"""The download stage validates before it replaces data/raw/<name>, names the user's files in its
errors, reports `missing: skip`, refuses archive bombs and links out of a local folder.

Every case runs the stage as the user does (`python pipelines/download.py --params params.yaml` in a
project folder) and checks the exit code, the error line, that a good earlier copy in data/raw is
kept byte for byte, and that no staging folder or outside file is left in data/raw."""
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from stargan.config import SyntheticConfig
from stargan.data.download import tree_digest
from stargan.data.synthetic import write_celeba_like
from test_download import server, tiny_png, write_celeba, zip_tree  # noqa: F401  (server: a fixture)
from tiny_project import run_stage

ATTRS = ["Male", "Young"]


def project(root: Path, spec: dict, **download) -> Path:
    """A project folder whose params.yaml names one dataset, ``celeba``."""
    spec = {"source": "local", "layout": "celeba", "attributes": ATTRS, **spec}
    params = {"data": {"datasets": {"celeba": spec}}, "download": {"timeout_s": 5, "retries": 1, **download},
              "align": {"image_size": 32, "workers": 1}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def download(root: Path, spec: dict, **dl):
    return run_stage(project(root, spec, **dl), "download", check=False)


def error_line(proc) -> str:
    """The one error line of a failed stage (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("[download] error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def digest_all(root: Path) -> dict:
    """Every file under root (SOURCE.json included) -> sha256: 'byte for byte the same'."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def faces(root: Path, n: int = 12) -> Path:
    """A CelebA-layout folder with real list files (attributes, landmarks, partition)."""
    write_celeba_like(root, SyntheticConfig(celeba_images=n, image_size=64))
    return root.resolve()


@pytest.fixture
def good(tmp_path):
    """A project whose data/raw/celeba holds a good copy of ``src``; returns (project, src, digest)."""
    src = faces(tmp_path / "src")
    proj = tmp_path / "proj"
    r = download(proj, {"path": str(src)})
    assert r.returncode == 0, r.stderr
    return proj, src, digest_all(proj / "data/raw/celeba")


def assert_kept(proj: Path, before: dict):
    assert digest_all(proj / "data/raw/celeba") == before
    assert sorted(os.listdir(proj / "data/raw")) == ["celeba"]      # no .partial/.ready/.old left


# -------------------------------------------------------------------- validation before commit

def test_listed_images_missing_from_a_folder_fail_and_keep_the_good_copy(good):
    proj, src, before = good
    for name in ("000003.jpg", "000007.jpg"):
        (src / "img_celeba" / name).unlink()
    r = download(proj, {"path": str(src)})
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: {src}/img_celeba: 2 of the 12 images listed in "
        "list_attr_celeba.txt are missing (000003.jpg, 000007.jpg); add them, or set "
        "data.datasets.celeba.missing: skip to leave them out")
    assert ".partial" not in r.stderr
    assert_kept(proj, before)


def test_image_without_label_row_fails_even_with_skip(good):
    proj, src, before = good
    shutil.copy(src / "img_celeba/000001.jpg", src / "img_celeba/999999.jpg")
    r = download(proj, {"path": str(src), "missing": "skip"})
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: {src}/img_celeba: 1 image(s) have no row in "
        "list_attr_celeba.txt (first: 999999.jpg); add their labels or remove them")
    assert_kept(proj, before)


def test_skip_reports_records_and_align_reads_the_same(good):
    proj, src, _ = good
    for name in ("000003.jpg", "000007.jpg"):
        (src / "img_celeba" / name).unlink()
    r = download(proj, {"path": str(src), "missing": "skip"})
    assert r.returncode == 0, r.stderr
    raw = proj / "data/raw/celeba"
    assert f"celeba: left out 2 listed image(s) that are not in the source (missing: skip): 000003.jpg, " \
           f"000007.jpg; recorded in {raw / 'SOURCE.json'}" in r.stdout
    assert "10 images" in r.stdout
    assert json.loads((raw / "SOURCE.json").read_text())["missing"] == {"count": 2, "first": ["000003.jpg", "000007.jpg"]}

    a = run_stage(proj, "align", check=False)
    assert a.returncode == 0, a.stderr
    report = json.loads((proj / "data/aligned/celeba/report.json").read_text())
    assert report["total"] == 10

    kept = digest_all(raw)             # back to missing: error: re-checked, refused, the copy kept
    r = download(proj, {"path": str(src), "missing": "error"})
    assert error_line(r).startswith(f"[download] error: data.datasets.celeba: {src}/img_celeba: 2 of the 12 images")
    assert_kept(proj, kept)


def test_skip_that_leaves_no_image_is_an_error(good):
    proj, src, before = good
    for p in (src / "img_celeba").iterdir():
        p.unlink()
    (src / "img_celeba/README.txt").write_text("images go here")
    r = download(proj, {"path": str(src), "missing": "skip"})
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: {src}/img_celeba: none of the 12 images listed in "
        "list_attr_celeba.txt is there (000001.jpg, 000002.jpg, 000003.jpg, 000004.jpg, 000005.jpg, ...), "
        "so missing: skip leaves no image; put the images in this folder")
    assert_kept(proj, before)


def test_errors_in_a_local_archive_name_the_member_in_the_archive(tmp_path):
    src = write_celeba(tmp_path / "src")
    (src / "img_align_celeba/000002.png").unlink()
    arc = zip_tree(src, tmp_path / "mine.zip", "wrapper")
    r = download(tmp_path / "proj", {"path": str(arc)})
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: wrapper/img_align_celeba in {arc}: 1 of the 3 images listed in "
        "list_attr_celeba.txt are missing (000002.png); add them, or set data.datasets.celeba.missing: skip "
        "to leave them out")
    (src / "img_align_celeba/000002.png").write_bytes(tiny_png(1))
    attr = src / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:4] + [lines[4].rsplit(" ", 1)[0]]) + "\n")     # row 000003: a value short
    arc = zip_tree(src, tmp_path / "mine2.zip", "wrapper")
    r = download(tmp_path / "proj", {"path": str(arc)})
    assert error_line(r).startswith(
        f"[download] error: data.datasets.celeba: wrapper/list_attr_celeba.txt:5 in {arc}: expected a file "
        "name and 5 values, found 4 value(s)")
    assert not (tmp_path / "proj/data/raw/celeba").exists()
    assert os.listdir(tmp_path / "proj/data/raw") == []


def test_incomplete_downloaded_archive_says_delete_it_and_rerun(server, tmp_path):
    src = write_celeba(tmp_path / "src", image_dir="images")
    full = zip_tree(src, tmp_path / "full.zip", "celeba").read_bytes()
    (src / "images/000002.png").unlink()
    server.files["/celeba.zip"] = zip_tree(src, tmp_path / "cut.zip", "celeba").read_bytes()
    spec = {"source": "celeba", "url": server.url + "/celeba.zip"}
    r = download(tmp_path / "proj", spec)
    (cached,) = (tmp_path / "proj/data/downloads").iterdir()
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: {cached} is incomplete: 1 of the 3 images listed in its "
        f"list_attr_celeba.txt are not in it (000002.png); delete {cached} and re-run the download stage, or set "
        "data.datasets.celeba.missing: skip to use the images it has")
    assert os.listdir(tmp_path / "proj/data/raw") == []
    cached.unlink()                               # the advice works: the fixed file is fetched anew
    server.files["/celeba.zip"] = full
    r = download(tmp_path / "proj", spec)
    assert r.returncode == 0, r.stderr
    assert "3 images" in r.stdout


# ------------------------------------------------------------------------------ archive bombs

def zeros_zip(path: Path, mib: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("wrapper/img_align_celeba/000001.png", bytes(mib << 20))
    return path


def zeros_tgz(path: Path, mib: int) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("wrapper/img_align_celeba/000001.png")
        info.size = mib << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    return path


@pytest.mark.parametrize("make", [zeros_zip, zeros_tgz])
def test_compression_bomb_is_refused_before_writing(good, tmp_path, make):
    proj, _, before = good
    arc = make(tmp_path / ("bomb.zip" if make is zeros_zip else "bomb.tar.gz"), 50)
    assert arc.stat().st_size < 200_000
    r = download(proj, {"path": str(arc)})
    assert re.fullmatch(
        rf"\[download\] error: data\.datasets\.celeba: {re.escape(str(arc))}: would write 50\.0 MiB when "
        r"extracted from [\d.]+ KiB, \d+ times its size, over the limit of 100 \(a decompression bomb\?\); "
        r"if the archive is genuine, raise download\.max_compression_ratio", error_line(r))
    assert_kept(proj, before)


def test_archive_over_the_byte_limit_is_refused(good, tmp_path):
    proj, _, before = good
    arc = zeros_tgz(tmp_path / "big.tar.gz", 3)
    r = download(proj, {"path": str(arc)}, max_extract_bytes=1_000_000)
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: {arc}: would write 3.0 MiB when extracted, over the limit of "
        "976.6 KiB; if the archive is genuine, raise download.max_extract_bytes")
    assert_kept(proj, before)


# ----------------------------------------------------------------------------------- symlinks

@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_bytes(b"not part of the dataset")
    return d.resolve()


@pytest.mark.parametrize("link,target", [("notes.txt", "secret.txt"), ("extra", "")])
def test_link_out_of_the_folder_is_refused(good, outside, link, target):
    proj, src, before = good
    (src / link).symlink_to(outside / target if target else outside)
    r = download(proj, {"path": str(src)})
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: {src / link}: a symbolic link to "
        f"{outside / target if target else outside}, outside the dataset folder {src}; replace the link with "
        "the real file or folder, or set data.datasets.celeba.follow_links: true if you trust it")
    assert_kept(proj, before)
    assert not any(b"not part of the dataset" in p.read_bytes()
                   for p in (proj / "data").rglob("*") if p.is_file())


def test_follow_links_true_copies_the_target(good, outside):
    proj, src, _ = good
    (src / "notes.txt").symlink_to(outside / "secret.txt")
    r = download(proj, {"path": str(src), "follow_links": True})
    assert r.returncode == 0, r.stderr
    assert (proj / "data/raw/celeba/notes.txt").read_bytes() == b"not part of the dataset"


def test_links_inside_the_folder_are_fine_and_digest_matches_copy(good):
    proj, src, _ = good
    (src / "alias").symlink_to("img_celeba")
    (src / "partition.txt").symlink_to(src / "list_eval_partition.txt")
    r = download(proj, {"path": str(src)})
    assert r.returncode == 0, r.stderr
    raw = proj / "data/raw/celeba"
    assert (raw / "alias/000001.jpg").read_bytes() == (src / "img_celeba/000001.jpg").read_bytes()
    rec = json.loads((raw / "SOURCE.json").read_text())
    assert (rec["sha256"], rec["bytes"]) == tree_digest(raw) == tree_digest(src)   # same file set


@pytest.mark.parametrize("follow", [False, True])
def test_link_loop_is_refused(good, follow):
    proj, src, before = good
    (src / "img_celeba/loop").symlink_to("..")
    r = download(proj, {"path": str(src), "follow_links": follow})
    assert error_line(r) == (
        f"[download] error: data.datasets.celeba: {src}/img_celeba/loop: a symbolic link to {src}, a folder "
        "that contains the link (a loop); remove the link")
    assert_kept(proj, before)


def test_missing_takes_error_or_skip_only(tmp_path):
    r = download(tmp_path / "proj", {"path": str(tmp_path), "missing": "maybe"})
    assert error_line(r).endswith("data.datasets.celeba.missing: 'maybe' is not allowed; choose one of error, skip")
