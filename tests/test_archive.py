"""Safe extraction: unsafe members are refused by name before anything is written."""
import io
import os
import shutil
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from stargan.data.archive import ArchiveError, UnsafeArchiveError, archive_kind, extract


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] = {}) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in symlinks.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: dict[str, bytes], links: list[tuple[str, bytes, str]] = (), mode="w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind, target in links:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return path


def assert_nothing_escaped(tmp_path: Path, dest: Path):
    assert not (tmp_path / "evil").exists()
    assert not dest.exists() or not any(dest.rglob("*"))


@pytest.mark.parametrize("bad", ["../evil", "a/../../evil", "/abs/evil", "C:\\evil", "..\\evil"])
def test_zip_refuses_escaping_names(tmp_path, bad):
    arc = make_zip(tmp_path / "bad.zip", {"ok/a.txt": b"fine", bad: b"pwned"})
    dest = tmp_path / "out" / "x"
    with pytest.raises(UnsafeArchiveError) as e:
        extract(arc, dest)
    assert repr(bad)[1:-1] in str(e.value) or bad in str(e.value)
    assert_nothing_escaped(tmp_path, dest)


def test_zip_refuses_symlink_outside(tmp_path):
    arc = make_zip(tmp_path / "bad.zip", {"ok.txt": b"x"}, symlinks={"d/link": "../../etc/passwd"})
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="d/link"):
        extract(arc, dest)
    assert_nothing_escaped(tmp_path, dest)
    arc = make_zip(tmp_path / "bad2.zip", {}, symlinks={"abs": "/etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="abs"):
        extract(arc, tmp_path / "out2")


@pytest.mark.parametrize("bad", ["../evil", "/abs/evil", "x/../../evil"])
def test_tar_refuses_escaping_names(tmp_path, bad):
    arc = make_tar(tmp_path / "bad.tar", {"ok/a.txt": b"fine", bad: b"pwned"})
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as e:
        extract(arc, dest)
    assert bad in str(e.value)
    assert_nothing_escaped(tmp_path, dest)
    assert not Path("/abs/evil").exists()


@pytest.mark.parametrize("name,kind,target", [
    ("sub/link", tarfile.SYMTYPE, "../../evil"),
    ("link", tarfile.SYMTYPE, "/etc/passwd"),
    ("hard", tarfile.LNKTYPE, "../evil"),
    ("dev", tarfile.CHRTYPE, ""),
    ("fifo", tarfile.FIFOTYPE, ""),
])
def test_tar_refuses_links_outside_and_devices(tmp_path, name, kind, target):
    arc = make_tar(tmp_path / "bad.tar.gz", {"ok.txt": b"x"}, [(name, kind, target)], mode="w:gz")
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=name):
        extract(arc, dest)
    assert_nothing_escaped(tmp_path, dest)


def test_benign_zip_extracts(tmp_path):
    arc = make_zip(tmp_path / "good.zip", {"data/": b"", "data/a/1.txt": b"one", "./data/b.txt": b"two"},
                   symlinks={"data/alias": "a/1.txt"})
    assert archive_kind(arc) == "zip"
    n = extract(arc, tmp_path / "out")
    assert n == 4
    assert (tmp_path / "out/data/a/1.txt").read_bytes() == b"one"
    assert (tmp_path / "out/data/b.txt").read_bytes() == b"two"
    assert (tmp_path / "out/data/alias").read_bytes() == b"one"


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tgz"), ("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")])
def test_benign_tar_extracts(tmp_path, mode, suffix):
    arc = make_tar(tmp_path / f"good{suffix}", {"d/a.txt": b"A", "d/e/b.txt": b"B"},
                   [("d/link", tarfile.SYMTYPE, "a.txt")], mode=mode)
    assert archive_kind(arc) == "tar"
    extract(arc, tmp_path / "out")
    assert (tmp_path / "out/d/e/b.txt").read_bytes() == b"B"
    assert (tmp_path / "out/d/link").read_bytes() == b"A"


def test_truncated_and_non_archives(tmp_path):
    arc = make_zip(tmp_path / "good.zip", {"a.txt": b"x" * 5000})
    data = arc.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="cut.zip"):
        extract(tmp_path / "cut.zip", tmp_path / "out")
    (tmp_path / "page.zip").write_bytes(b"<!DOCTYPE html><html></html>")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        extract(tmp_path / "page.zip", tmp_path / "out2")


def test_target_must_be_empty(tmp_path):
    arc = make_zip(tmp_path / "good.zip", {"a.txt": b"x"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("k")
    with pytest.raises(ArchiveError, match="not empty"):
        extract(arc, tmp_path / "out")


# ------------------------------------------------------------------------------ size limits

def test_zip_bomb_is_refused_before_writing(tmp_path):
    arc = tmp_path / "bomb.zip"
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(50 << 20))              # 50 MiB of zeros -> ~50 KB
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"bomb\.zip: would write 50\.0 MiB when extracted from .* times its "
                                           r"size, over the limit of 100 .*raise download\.max_compression_ratio"):
        extract(arc, dest)
    assert list(dest.iterdir()) == []
    assert extract(arc, tmp_path / "ok", max_ratio=10_000) == 1       # genuine: the setting lets it through
    assert (tmp_path / "ok/zeros.bin").stat().st_size == 50 << 20


def test_tar_over_byte_limit_is_refused(tmp_path):
    arc = make_tar(tmp_path / "big.tar.gz", {"a.bin": bytes(3 << 20), "b.txt": b"x"}, mode="w:gz")
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"big\.tar\.gz: would write 3\.0 MiB when extracted, over the limit of "
                                           r"1\.0 MiB; if the archive is genuine, raise download\.max_extract_bytes"):
        extract(arc, dest, max_bytes=1 << 20)
    assert list(dest.iterdir()) == []


def test_zip_member_larger_than_declared_is_refused_and_nothing_stays(tmp_path):
    arc = tmp_path / "liar.zip"
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr("liar.bin", bytes(4 << 20))
    data = bytearray(arc.read_bytes())
    local = data.find(b"liar.bin")                 # the name follows the local header (30 bytes) ...
    central = data.find(b"liar.bin", local + 1)    # ... and the central directory entry (46 bytes)
    struct.pack_into("<I", data, local - 30 + 22, 1000)      # declared uncompressed size: a lie
    struct.pack_into("<I", data, central - 46 + 24, 1000)
    arc.write_bytes(bytes(data))
    assert [i.file_size for i in zipfile.ZipFile(arc).infolist()] == [4, 1000]
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"liar\.zip"):
        extract(arc, dest)
    assert list(dest.iterdir()) == []


def test_archive_bigger_than_free_space_is_refused(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    info = tarfile.TarInfo("huge.bin")
    info.size = free + (1 << 30)
    arc = tmp_path / "huge.tar"
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    arc.write_bytes(header)
    try:                                                       # a sparse file: takes no real space
        os.truncate(arc, len(header) + -(-info.size // 512) * 512 + 1024)
    except OSError as e:
        pytest.skip(f"no sparse file this big here: {e}")
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"huge\.tar: would write .* into .*out, whose filesystem has .* free"):
        extract(arc, dest, max_bytes=1 << 60)
    assert list(dest.iterdir()) == []
