"""Where a training run's shared files live: a local folder or any pyarrow.fs / fsspec URI.

``train.ray.storage_path`` is handed to Ray Train as it is (Ray Train writes checkpoints through
``pyarrow.fs``: a local folder, NFS, ``s3://``, ``gs://``, ``abfs://``, ``hdfs://``), and the
driver keeps its own small per-run record (``<storage>/<run name>/mlflow_run.json``: which MLflow
run a resumed training continues) in the same place through :class:`RunStorage`, so a rerun from
*any* node of the cluster resumes the same Ray Train run and the same MLflow run.

- A plain path (relative to the repository root, or absolute) is a local/NFS folder.
- A URI goes through ``pyarrow.fs.FileSystem.from_uri``; schemes pyarrow does not know
  (``memory://``, ``gcs://`` via gcsfs, ...) go through fsspec, wrapped for pyarrow with
  ``pyarrow.fs.PyFileSystem(FSSpecHandler(...))`` and passed to Ray as ``storage_filesystem``.

The same opener serves ``shard.uri`` (shards published to an object store, read by the training
workers: stargan/data/remote_shards.py).

For S3-compatible object stores (MinIO, Ceph), credentials and the endpoint come from the usual
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``; pyarrow, boto3
and so MLflow's S3 artifact store all read them) or the URI's query for non-secret settings
(``s3://bucket/runs?endpoint_override=minio:9000&scheme=http``): see docs/scaling.md. A URI that
carries a secret is refused (:func:`refuse_credentials`): these URIs are params, and params are
logged to MLflow, printed and committed to git.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from stargan.errors import StarganError

#: URI query keys that are secrets (pyarrow's S3/GCS options); their place is the environment.
SECRET_QUERY_KEYS = frozenset({"access_key", "secret_key", "session_token", "access_token", "sas_token",
                               "account_key", "password", "token"})


_OBJECT_STORES = tuple(getattr(pafs, n) for n in ("S3FileSystem", "GcsFileSystem", "AzureFileSystem") if hasattr(pafs, n))


class StorageError(StarganError, ValueError):
    """A storage path or URI that cannot be used (unknown scheme, credentials written into it)."""


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base / parts`` for a folder, ``base/parts`` for a URI (``Path`` would fold ``s3://`` to ``s3:/``)."""
    if not is_uri(base):
        return Path(base).joinpath(*parts)
    head, sep, query = str(base).partition("?")
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


def refuse_credentials(uri: str, what: str) -> None:
    """Raise :class:`StorageError` when ``uri`` holds a secret (``s3://KEY:SECRET@bucket``, or a
    ``secret_key=``/``access_key=``/... query): it would be logged with the params. The message
    does not repeat the secret."""
    if not is_uri(uri):
        return
    parts = urlsplit(uri)
    found = sorted({k for k, _ in parse_qsl(parts.query)} & SECRET_QUERY_KEYS)
    if parts.username or parts.password:
        found.insert(0, "user:password@")
    if found:
        raise StorageError(f"{what}: the URI carries credentials ({', '.join(found)}); params are logged to MLflow "
                           "and kept in git, so remove them and set them in the environment instead "
                           "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or "
                           "GOOGLE_APPLICATION_CREDENTIALS; docs/scaling.md)")


@dataclass
class RunStorage:
    """The storage root of all runs: ``filesystem`` + ``root`` (a path inside it), and what Ray
    Train's ``RunConfig`` needs (``ray_storage_path``, ``ray_filesystem``)."""
    filesystem: pafs.FileSystem
    root: str
    ray_storage_path: str
    ray_filesystem: pafs.FileSystem | None
    local_root: Path | None            # the same folder as a local path, when it is one
    uri: str = ""                      # as the user wrote it (for messages)

    def _path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel.lstrip('/')}" if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.filesystem.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def read_text(self, rel: str) -> str:
        with self.filesystem.open_input_stream(self._path(rel)) as f:
            return f.read().decode()

    def _make_parent(self, path: str) -> None:
        """Create the parent folder, except on object stores: they have no folders, and pyarrow's
        ``create_dir`` there writes empty marker objects, up to the bucket, outside our prefix."""
        if not isinstance(self.filesystem, _OBJECT_STORES):
            self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)

    def write_text(self, rel: str, text: str) -> None:
        """Write a small file (object stores replace whole objects, so this is atomic there; on a
        local folder the file is written beside and renamed)."""
        path = self._path(rel)
        self._make_parent(path)
        if self.local_root is not None:
            tmp = Path(path).with_name(Path(path).name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            return
        with self.filesystem.open_output_stream(path) as f:
            f.write(text.encode())

    def delete(self, rel: str) -> None:
        """Remove a small file if it is there."""
        if self.exists(rel):
            self.filesystem.delete_file(self._path(rel))

    def describe(self, rel: str = "") -> str:
        return str(self.local_root / rel) if self.local_root is not None else str(join(self.uri, rel))

    def file_info(self, rel: str) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self._path(rel))

    def open_input_file(self, rel: str) -> Any:
        """A random-access file (on object stores each ``read_at`` is one ranged GET)."""
        return self.filesystem.open_input_file(self._path(rel))

    def list_files(self, rel: str = "") -> list[str]:
        """Paths (relative to ``rel``) of every file below ``rel``; [] when there is none."""
        base = self._path(rel).rstrip("/")
        infos = self.filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File)

    def upload(self, local: Path, rel: str) -> None:
        """Copy one local file to ``rel`` (a whole-object PUT on object stores: readers never see
        half of it)."""
        path = self._path(rel)
        self._make_parent(path)
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)


def open_storage(path: str | Path, repo_root: Path, what: str = "train.ray.storage_path") -> RunStorage:
    """A :class:`RunStorage` for ``train.ray.storage_path`` or ``shard.uri`` (plain path or URI;
    ``what`` names the param in messages)."""
    text = str(path)
    refuse_credentials(text, what)
    if not is_uri(text):
        local = (repo_root / text).resolve()
        local.mkdir(parents=True, exist_ok=True)
        return RunStorage(pafs.LocalFileSystem(), str(local), str(local), None, local, str(local))
    try:
        fs, root = pafs.FileSystem.from_uri(text)
        local = Path(root) if isinstance(fs, pafs.LocalFileSystem) else None
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
        return RunStorage(fs, root.rstrip("/") or "/", text, None, local, text)
    except (ValueError, NotImplementedError):      # pyarrow.lib.ArrowInvalid: a scheme it does not know
        return _fsspec_storage(text, what)


def _fsspec_storage(uri: str, what: str) -> RunStorage:
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise StorageError(f"{what}: {uri!r} is neither a pyarrow.fs nor an fsspec URI ({e}); "
                           "use a folder, file://, s3://, gs://, abfs:// or hdfs://") from None
    wrapped = PyFileSystem(FSSpecHandler(fs))
    wrapped.create_dir(root, recursive=True)
    return RunStorage(wrapped, root, root, wrapped, None, uri)


def ray_run_config_kwargs(storage: RunStorage) -> dict[str, Any]:
    """``storage_path`` (+ ``storage_filesystem`` for fsspec-only schemes) for ``ray.train.RunConfig``."""
    kw: dict[str, Any] = {"storage_path": storage.ray_storage_path}
    if storage.ray_filesystem is not None:
        kw["storage_filesystem"] = storage.ray_filesystem
    return kw
