"""A real S3 API on 127.0.0.1 for the tests: moto's standalone server (``moto[server]``, pinned in
constraints.txt), started as its own process on a free port, spoken to over HTTP by pyarrow,
boto3 and MLflow exactly as they speak to AWS. Nothing is mocked in the test process.

Why moto and not MinIO/SeaweedFS: it installs from PyPI (no binary download, which this
project's machines cannot do), starts in about 3 s, and implements the calls used here
(ranged GET, multipart upload, list, delete). :class:`FlakyProxy` sits in front of it to make
transient network errors happen for real (connections reset before a byte is answered).
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "stargan-test-key"
SECRET_KEY = "s3cr3t-never-logged-7f3a9c"      # searched for in every log by the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    log: Path

    def env(self) -> dict[str, str]:
        """What a process needs to reach it: the standard AWS variables only."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        e = self.env()
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=e["AWS_DEFAULT_REGION"])

    def all_keys(self) -> dict[str, list[str]]:
        """bucket -> every object key in it (the whole server)."""
        c = self.client()
        out = {}
        for b in c.list_buckets()["Buckets"]:
            keys, token = [], None
            while True:
                page = c.list_objects_v2(Bucket=b["Name"], **({"ContinuationToken": token} if token else {}))
                keys += [o["Key"] for o in page.get("Contents", [])]
                token = page.get("NextContinuationToken")
                if not token:
                    break
            out[b["Name"]] = keys
        return out

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


def start_s3(log_dir: Path) -> S3Server:
    port = free_port()
    log = log_dir / "moto.log"
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                server.stop()
                raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    return server


class FlakyProxy:
    """A TCP proxy to ``port`` on 127.0.0.1 that resets the next ``fail`` connections it accepts
    (set by the test): a transient network error, as an overloaded load balancer gives."""

    def __init__(self, port: int):
        self.target = port
        self.fail = 0
        self.dropped = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.fail > 0:
                self.fail -= 1
                self.dropped += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()                        # RST: connection reset by peer
                continue
            up = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()

