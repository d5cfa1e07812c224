"""The download stage against a real HTTP server on 127.0.0.1: resume, retries, refusals,
placement into data/raw/<name>/, idempotence, local sources and the stage script."""
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stargan.config import config_from_dict
from stargan.data.download import DownloadError, download, fetch_all
from stargan.data.formats import read_dataset

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ------------------------------------------------------------------------------ the server

class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.modes[path]`` picks a misbehaviour."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        path = self.path.split("?")[0]
        srv.log.append({"path": path, "range": self.headers.get("Range")})
        hits = sum(1 for r in srv.log if r["path"] == path)
        mode = srv.modes.get(path, "normal")
        if path not in srv.files:
            self.send_error(404, "Not Found")
            return
        if mode == "html":
            body = b"<!DOCTYPE html><html><body>This link has expired</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if mode == "flaky" and hits == 1:
            self.send_error(503, "Service Unavailable")
            return
        data = srv.files[path]
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and mode not in ("norange", "drop_norange"):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", srv.ctype.get(path, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        if mode in ("drop", "drop_norange") and hits == 1:
            self.wfile.write(body[: len(body) // 3])   # then hang up mid-file
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.modes, srv.ctype, srv.log = {}, {}, {}, []
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def fast(**kw):
    return dict(timeout_s=5, retries=3, backoff_s=0.01, progress=False, **kw)


# ---------------------------------------------------------------------------- download()

def test_full_download_with_checksum(server, tmp_path):
    server.files["/a.zip"] = PAYLOAD
    res = download(server.url + "/a.zip", tmp_path / "a.zip", expected_sha256=SHA, **fast())
    assert res.sha256 == SHA and res.bytes == len(PAYLOAD)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert not (tmp_path / "a.zip.part").exists()


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.files["/a.zip"] = PAYLOAD
    server.modes["/a.zip"] = "drop"
    res = download(server.url + "/a.zip", tmp_path / "a.zip", expected_sha256=SHA, **fast())
    assert res.sha256 == SHA and (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert len(server.log) == 2
    assert server.log[0]["range"] is None
    assert server.log[1]["range"] == f"bytes={len(PAYLOAD) // 3}-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/a.zip"] = PAYLOAD
    server.modes["/a.zip"] = "drop_norange"
    res = download(server.url + "/a.zip", tmp_path / "a.zip", expected_sha256=SHA, **fast())
    assert res.sha256 == SHA and (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert server.log[1]["range"] is not None       # asked to resume, got a 200 with the whole file


def test_leftover_part_from_earlier_run_is_resumed(server, tmp_path):
    server.files["/a.zip"] = PAYLOAD
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:1000])
    res = download(server.url + "/a.zip", tmp_path / "a.zip", expected_sha256=SHA, **fast())
    assert res.sha256 == SHA and server.log[0]["range"] == "bytes=1000-"
    (tmp_path / "b.zip.part").write_bytes(PAYLOAD)    # complete already: the server answers 416
    server.files["/b.zip"] = PAYLOAD
    assert download(server.url + "/b.zip", tmp_path / "b.zip", **fast()).sha256 == SHA


def test_transient_5xx_is_retried(server, tmp_path):
    server.files["/a.zip"] = PAYLOAD
    server.modes["/a.zip"] = "flaky"
    assert download(server.url + "/a.zip", tmp_path / "a.zip", **fast()).sha256 == SHA
    assert len(server.log) == 2


def test_checksum_mismatch_keeps_corrupt_aside(server, tmp_path):
    server.files["/a.zip"] = PAYLOAD[:-1] + b"\0"
    with pytest.raises(DownloadError) as e:
        download(server.url + "/a.zip", tmp_path / "a.zip", expected_sha256=SHA, **fast())
    msg = str(e.value)
    assert "checksum mismatch" in msg and SHA in msg and hashlib.sha256(server.files["/a.zip"]).hexdigest() in msg
    assert (tmp_path / "a.zip.corrupt").exists()
    assert not (tmp_path / "a.zip").exists() and not (tmp_path / "a.zip.part").exists()


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_instead_of_data_is_refused(server, tmp_path, ctype):
    if ctype.startswith("text/html"):
        server.files["/a.zip"], server.modes["/a.zip"] = b"", "html"
    else:   # a lying Content-Type: the body gives it away
        server.files["/a.zip"] = b"\n  <!DOCTYPE html><html>expired</html>"
        server.ctype["/a.zip"] = ctype
    url = server.url + "/a.zip"
    with pytest.raises(DownloadError, match="HTML") as e:
        download(url, tmp_path / "a.zip", **fast())
    assert url in str(e.value) and "Dropbox" in str(e.value)
    assert not (tmp_path / "a.zip").exists()


def test_http_error_names_status_and_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*/missing\.zip"):
        download(server.url + "/missing.zip", tmp_path / "m.zip", **fast())


def test_connection_refused_fails_fast(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1.*check the network.*source: local"):
        download(f"http://127.0.0.1:{port}/a.zip", tmp_path / "a.zip", timeout_s=5, retries=5, progress=False)
    assert time.monotonic() - t0 < 3


# ----------------------------------------------------------------------- fixtures: CelebA

ATTRS = ["5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Male", "Young"]


def tiny_png(seed: int) -> bytes:
    raw = b"".join(b"\0" + bytes((seed * 40 + x * 7 + y) % 256 for x in range(12)) for y in range(4))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_celeba(root: Path, image_dir="img_align_celeba") -> Path:
    (root / image_dir).mkdir(parents=True)
    rows = []
    for i in range(3):
        name = f"{i + 1:06d}.png"
        (root / image_dir / name).write_bytes(tiny_png(i))
        rows.append(name + " " + " ".join("1" if (i + j) % 2 else "-1" for j in range(len(ATTRS))))
    (root / "list_attr_celeba.txt").write_text("3\n" + " ".join(ATTRS) + "\n" + "\n".join(rows) + "\n")
    return root


def zip_tree(src: Path, arc: Path, prefix: str) -> Path:
    with zipfile.ZipFile(arc, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, f"{prefix}/{p.relative_to(src).as_posix()}")
    return arc


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def cfg_for(tmp_path, datasets, **download):
    return config_from_dict({"data": {"root": str(tmp_path / "data"), "datasets": datasets},
                             "download": {"timeout_s": 5, "retries": 1, **download}})


# ---------------------------------------------------------------------------- fetch_all()

def test_fetch_official_source_over_http(server, tmp_path, capsys):
    arc = zip_tree(write_celeba(tmp_path / "src", image_dir="images"), tmp_path / "celeba.zip", "celeba")
    server.files["/celeba.zip"] = arc.read_bytes()
    spec = {"source": "celeba", "layout": "celeba", "attributes": ["Male", "Young"],
            "url": server.url + "/celeba.zip"}
    cfg = cfg_for(tmp_path, {"faces": spec})
    (tmp_path / "data/raw/.faces.partial").mkdir(parents=True)     # a crashed earlier run
    out = fetch_all(cfg)["faces"]
    root = tmp_path / "data/raw/faces"
    rec = json.loads((root / "SOURCE.json").read_text())
    assert rec == {"source": "celeba", "url": server.url + "/celeba.zip", "layout": "celeba",
                   "sha256": hashlib.sha256(arc.read_bytes()).hexdigest(), "bytes": arc.stat().st_size}
    assert out["status"] == "extracted" and Path(out["root"]) == root
    assert (root / "images/000001.png").exists() and (root / "list_attr_celeba.txt").exists()
    assert not (tmp_path / "data/raw/.faces.partial").exists()
    assert "no published sha256" in capsys.readouterr().err
    assert len(read_dataset(root, "celeba", ["Male", "Young"], "faces").records) == 3

    assert fetch_all(cfg)["faces"]["status"] == "up to date"          # run twice: pay once
    assert len(server.log) == 1
    import shutil
    shutil.rmtree(root)                                                # DVC removed the output
    assert fetch_all(cfg)["faces"]["status"] == "extracted"          # from data/downloads
    assert len(server.log) == 1

    pinned = cfg_for(tmp_path, {"faces": {**spec, "sha256": "0" * 64}})
    shutil.rmtree(tmp_path / "data/downloads")
    with pytest.raises(DownloadError, match=r"data\.datasets\.faces: checksum mismatch"):
        fetch_all(pinned)
    assert (root / "SOURCE.json").exists()       # the earlier good copy is untouched


def test_fetch_html_link_names_dataset(server, tmp_path):
    server.files["/celeba.zip"], server.modes["/celeba.zip"] = b"", "html"
    cfg = cfg_for(tmp_path, {"celeba": {"source": "celeba", "layout": "celeba", "attributes": ["Male"],
                                        "url": server.url + "/celeba.zip"}})
    with pytest.raises(DownloadError, match=r"^data\.datasets\.celeba: .*HTML"):
        fetch_all(cfg)
    assert not (tmp_path / "data/raw/celeba").exists()


def test_fetch_local_folder_hard_links_and_leaves_source_alone(tmp_path):
    src = write_celeba(tmp_path / "mine")
    (src / "SOURCE.json").write_text('{"user": "file"}')
    before = snapshot(src)
    cfg = cfg_for(tmp_path, {"celeba": {"source": "local", "layout": "celeba", "path": str(src),
                                        "attributes": ["Male"]}})
    out = fetch_all(cfg)["celeba"]
    root = tmp_path / "data/raw/celeba"
    assert out["status"] in ("hard-linked", "copied") and out["url"] == src.resolve().as_uri()
    assert snapshot(src) == before
    assert json.loads((root / "SOURCE.json").read_text())["source"] == "local"
    a, b = src / "img_align_celeba/000001.png", root / "img_align_celeba/000001.png"
    assert a.read_bytes() == b.read_bytes()
    if out["status"] == "hard-linked":
        assert os.path.samestat(a.stat(), b.stat())
    assert fetch_all(cfg)["celeba"]["status"] == "up to date"
    (src / "img_align_celeba/000001.png").write_bytes(tiny_png(9))   # the user's data changed
    assert fetch_all(cfg)["celeba"]["status"] != "up to date"


def test_fetch_local_zip_with_wrapper_folder(tmp_path):
    arc = zip_tree(write_celeba(tmp_path / "src"), tmp_path / "mine.zip", "wrapper")
    cfg = cfg_for(tmp_path, {"c": {"source": "local", "layout": "celeba", "path": str(arc),
                                   "attributes": ["Black_Hair"]}})
    out = fetch_all(cfg)["c"]
    root = tmp_path / "data/raw/c"
    assert out["status"] == "extracted" and out["sha256"] == hashlib.sha256(arc.read_bytes()).hexdigest()
    assert (root / "img_align_celeba/000003.png").exists()
    assert len(read_dataset(root, "celeba", ["Black_Hair"], "c").records) == 3


def test_fetch_rafd_flat_folder_is_sorted_and_needs_a_path(tmp_path):
    src = tmp_path / "RaFD"
    src.mkdir()
    for cam in ("000", "045", "090"):
        for expr in ("angry", "happy"):
            (src / f"Rafd{cam}_01_Caucasian_female_{expr}_frontal.jpg").write_bytes(tiny_png(1))
    cfg = cfg_for(tmp_path, {"rafd": {"source": "rafd", "layout": "rafd", "path": str(src)}})
    fetch_all(cfg)
    index = read_dataset(tmp_path / "data/raw/rafd", "rafd", [], "rafd")
    assert index.label_names == ["angry", "happy"] and len(index.records) == 4
    assert len(list(src.iterdir())) == 6                        # the user's folder is as it was
    with pytest.raises(DownloadError, match=r"data\.datasets\.rafd\.path.*Radboud"):
        fetch_all(cfg_for(tmp_path, {"rafd": {"source": "rafd", "layout": "rafd"}}))


def test_fetch_refuses_unsafe_local_archive(tmp_path):
    arc = tmp_path / "bad.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("../evil", "x")
    cfg = cfg_for(tmp_path, {"x": {"source": "local", "layout": "folders", "path": str(arc)}})
    with pytest.raises(DownloadError, match=r"data\.datasets\.x: .*'\.\./evil'"):
        fetch_all(cfg)
    assert not (tmp_path / "data/raw/x").exists() and not (tmp_path / "data/evil").exists()
    assert not any((tmp_path / "data/raw").iterdir())


# ------------------------------------------------------------------------ the stage script

def run_script(tmp_path, params: str):
    (tmp_path / "params.yaml").write_text(params)
    return subprocess.run([sys.executable, str(REPO / "pipelines/download.py"), "--params", "params.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_stage_script_local_celeba(tmp_path):
    write_celeba(tmp_path / "celeba_src")
    r = run_script(tmp_path, "data:\n  datasets:\n    celeba:\n      source: local\n      layout: celeba\n"
                             "      path: celeba_src\n      attributes: [Black_Hair, Male]\n")
    assert r.returncode == 0, r.stderr
    root = tmp_path / "data/raw/celeba"
    assert set(json.loads((root / "SOURCE.json").read_text())) == {"source", "url", "sha256", "bytes", "layout"}
    assert (root / "img_align_celeba/000002.png").exists()
    assert "3 images" in r.stdout and "Male" in r.stdout


def test_stage_script_bad_key_exits_2(tmp_path):
    r = run_script(tmp_path, "data:\n  datasets:\n    celeba:\n      sorce: local\n")
    assert r.returncode == 2
    assert "data.datasets.celeba.sorce" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
