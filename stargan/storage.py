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

For S3-compatible object stores (MinIO, Ceph), credentials and the endpoint come from the usual
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``) or the URI's
query (``s3://bucket/runs?endpoint_override=minio:9000&scheme=http``): see docs/scaling.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


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

    def write_text(self, rel: str, text: str) -> None:
        """Write a small file (object stores replace whole objects, so this is atomic there; on a
        local folder the file is written beside and renamed)."""
        path = self._path(rel)
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
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
        return str(self.local_root / rel) if self.local_root is not None else f"{self.uri.rstrip('/')}/{rel}"


def open_storage(path: str | Path, repo_root: Path) -> RunStorage:
    """A :class:`RunStorage` for ``train.ray.storage_path`` (plain path or URI)."""
    text = str(path)
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
        return _fsspec_storage(text)


def _fsspec_storage(uri: str) -> RunStorage:
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise ValueError(f"train.ray.storage_path: {uri!r} is neither a pyarrow.fs nor an fsspec URI ({e}); "
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
