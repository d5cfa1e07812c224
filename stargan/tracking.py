"""The one module that talks to the MLflow tracking server: runs, nested runs, params, metrics
in chunks, tags, artifacts, the offline fallback and the upload of an offline run later.
(The model registry's pyfunc class and model versions live in registry.py.)

Every run is tagged with where it came from (:func:`provenance_tags`: the git commit, the DVC
experiment and stage), and the default store is the project's own SQLite file, the main
repository's even from a DVC experiment workspace (:func:`project_root`).

Training: one run per training run, written by rank 0 only. Metrics are buffered and sent every
few seconds (live curves in the UI) and at every checkpoint. A worker that dies is restarted from
the last checkpoint and replays the steps after it; the replays are deterministic, so the restarted
logger skips the steps the run already holds and no step is logged twice (MLflow cannot delete
points). If the tracking server is unreachable,
training goes on: points stay in the buffer and in a local JSON-lines file beside the
checkpoint, a warning says so, and the next successful flush sends what was held back. If the
server cannot be reached when training *starts*, the driver warns and trains with an offline
logger (``run_id == ""``: metrics go to ``history.jsonl`` only) and says how to send the history
later (:func:`upload_run`, ``stargan mlflow-upload``). HTTP tracking URIs are probed with a plain
TCP connect first (:func:`server_reachable`), because MLflow's client retries a refused
connection with exponential backoff for minutes.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import numpy as np

from stargan.config import Config
from stargan.files import write_json
from stargan.visualize import save_png

DEFAULT_DB = "mlruns.db"
#: The checkpoint's ``extra`` key holding the id of the run that trained it.
RUN_ID_KEY = "mlflow_run_id"
#: In a training run's storage folder: which tracking run it writes to (a resumed run continues it).
RUN_RECORD = "mlflow_run.json"
#: MLflow's limits per ``log_batch`` call.
METRICS_PER_CALL, PARAMS_PER_CALL = 1000, 100


def project_root(repo_root: Path) -> Path:
    """The folder whose ``mlruns.db`` / ``mlartifacts`` hold this project's runs.

    ``dvc exp run --temp`` and queued experiments run the stages in a copy of the repository
    under ``<repo>/.dvc/tmp/exps/`` that DVC deletes afterwards; a store there would take the
    experiment's runs and registered versions with it while ``dvc exp show`` keeps its metrics.
    DVC passes the main repository's root to every stage as ``DVC_ROOT``: inside such a copy this
    returns the same folder of the main repository; everywhere else ``repo_root`` itself.
    """
    repo_root = Path(repo_root).resolve()
    main = os.environ.get("DVC_ROOT")
    workspace = next((p for p in (repo_root, *repo_root.parents) if (p / ".dvc").is_dir()), None)
    if not main or workspace is None or Path(main).resolve() == workspace:
        return repo_root
    mirrored = Path(main).resolve() / repo_root.relative_to(workspace)
    return mirrored if mirrored.is_dir() else repo_root


def resolve_tracking_uri(configured: str | None, repo_root: Path) -> str:
    """Env ``MLFLOW_TRACKING_URI`` wins, then ``train.mlflow.tracking_uri``, then SQLite in the
    project (the main repository's, from a DVC experiment workspace: :func:`project_root`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{project_root(repo_root) / DEFAULT_DB}"


def resolve_artifact_root(artifact_root: str, repo_root: Path) -> str:
    if "://" in artifact_root:
        return artifact_root
    return (project_root(repo_root) / artifact_root).resolve().as_uri()


def provenance_tags(repo_root: Path) -> dict[str, str]:
    """Tags that join an MLflow run to the code and the DVC experiment that made it: the git
    commit (the experiment's baseline under ``dvc exp run``), the DVC experiment name and stage."""
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git_head(repo_root)
    tags = {"mlflow.source.git.commit": commit, "stargan.dvc_experiment": os.environ.get("DVC_EXP_NAME"),
            "stargan.dvc_stage": os.environ.get("DVC_STAGE")}
    return {k: v for k, v in tags.items() if v}


def _git_head(repo_root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def server_reachable(tracking_uri: str, timeout_s: float = 3.0) -> bool:
    """False when an ``http(s)://`` tracking server does not accept a TCP connection within
    ``timeout_s``; True for anything else (SQLite, file stores: local, checked when used)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _warn(msg: str) -> None:
    print(f"[stargan] WARNING: {msg}", file=sys.stderr, flush=True)


class Tracker:
    """A project's tracking store and every call the project makes to it.

    ``uri``: the tracking URI; ``experiment`` and ``artifact_root``: where new runs go;
    ``repo_root``: whose git commit the runs are tagged with."""
    def __init__(self, uri: str, experiment: str = "stargan", artifact_root: str | None = None,
                 repo_root: Path | None = None):
        self.uri, self.experiment, self.repo_root = uri, experiment, repo_root
        self.artifact_root = artifact_root or resolve_artifact_root("mlartifacts", repo_root or Path.cwd())

    @classmethod
    def for_config(cls, cfg: Config, repo_root: Path) -> "Tracker":
        """The store ``train.mlflow`` names (``MLFLOW_TRACKING_URI`` wins), for the project at ``repo_root``."""
        m = cfg.train.mlflow
        return cls(resolve_tracking_uri(m.tracking_uri, repo_root), m.experiment,
                   resolve_artifact_root(m.artifact_root, repo_root), Path(repo_root))

    @cached_property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def reachable(self) -> bool:
        return server_reachable(self.uri)

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(self.experiment,
                                             artifact_location=f"{self.artifact_root.rstrip('/')}/{self.experiment}")

    def start_run(self, name: str, params: dict | None = None, tags: dict | None = None,
                  parent: str | None = None) -> str:
        """A new run (nested under ``parent``) with ``params`` flattened and provenance tags."""
        from mlflow.entities import Param

        tags = (provenance_tags(self.repo_root) if self.repo_root is not None else {}) | (tags or {})
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(self.experiment_id(), run_name=name, tags=tags).info.run_id
        flat = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params or {}).items())]
        for i in range(0, len(flat), PARAMS_PER_CALL):
            self.client.log_batch(run_id, params=flat[i:i + PARAMS_PER_CALL])
        return run_id

    def log_metrics(self, run_id: str, points: Iterable[tuple[str, float, int]]) -> None:
        """``(name, value, step)`` points, in as few calls as MLflow allows."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v, step in points]
        for i in range(0, len(batch), METRICS_PER_CALL):
            self.client.log_batch(run_id, metrics=batch[i:i + METRICS_PER_CALL])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v)[:4000])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_image(self, run_id: str, image: np.ndarray, artifact_file: str) -> None:
        self.client.log_image(run_id, image, artifact_file=artifact_file)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def has_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def last_steps(self, run_id: str, keys: Iterable[str]) -> dict[str, int]:
        """The last step of each metric the run holds (-1 for none)."""
        return {k: max((m.step for m in self.client.get_metric_history(run_id, k)), default=-1) for k in keys}

    def attempt(self, what: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn``; on any store or transport failure warn (naming ``what`` and the store) and
        return False: what was to be tracked is on disk either way, so nothing fails for tracking."""
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - any store/transport failure
            _warn(f"could not {what} at {self.uri} ({type(e).__name__}: {str(e)[:200]})")
            return False


def open_training_run(tracker: Tracker, name: str, params: dict, tags: dict) -> str:
    """The run id of a new training run, or "" (an offline run) when the store cannot be used:
    training must not fail, or wait minutes on client retries, because a tracking server is down."""
    if not tracker.reachable():
        _warn(f"the MLflow tracking server {tracker.uri} is unreachable")
        return ""
    try:
        return tracker.start_run(name, params, tags)
    except Exception as e:  # noqa: BLE001 - any store/transport failure: train without tracking
        _warn(f"cannot open an MLflow run at {tracker.uri} ({type(e).__name__}: {str(e)[:200]})")
        return ""


def warn_offline(tracker: Tracker, name: str, run_dir: Path) -> None:
    _warn(f"training run {name} goes on WITHOUT MLflow tracking: metrics are kept in "
          f"{run_dir / 'history.jsonl'} and sample grids beside it. To send them to MLflow later: "
          f"`stargan mlflow-upload {run_dir}` (tracking URI from train.mlflow.tracking_uri or "
          f"MLFLOW_TRACKING_URI, now {tracker.uri})")


def upload_run(tracker: Tracker, run_dir: Path, params: dict | None = None) -> str:
    """Send the ``history.jsonl`` of a run trained while MLflow was unreachable as a new run, and
    record it in the run folder's ``mlflow_run.json``; returns the run id. Each history line is
    ``{"step": n, "<metric>": value, ...}``."""
    history = Path(run_dir) / "history.jsonl"
    run_id = tracker.start_run(Path(run_dir).name, params, tags={"stargan.uploaded_from": str(history)})
    rows = [json.loads(ln) for ln in history.read_text().splitlines() if ln.strip()]
    tracker.log_metrics(run_id, [(k, v, row["step"]) for row in rows for k, v in row.items() if k != "step"])
    tracker.finish(run_id)

    write_json(Path(run_dir) / RUN_RECORD, {"run_id": run_id, "tracking_uri": tracker.uri})
    return run_id


class RunLogger:
    """Rank-0 logger bound to an existing run id (created by the driver) of the store at
    ``tracking_uri``; ``run_id == ""`` is an offline run: metrics go to ``local_log`` only."""
    def __init__(self, tracking_uri: str, run_id: str, local_log: Path | None = None, live_every_s: float = 10.0):
        self.tracker, self.run_id = Tracker(tracking_uri), run_id
        self.local_log, self.live_every_s = local_log, live_every_s
        self._last_send = time.monotonic()
        self._pending: list[tuple[str, float, int]] = []
        self._warned = False
        self._held: dict[str, int] | None = None    # last step the run already holds, per metric

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self._pending.append((k, float(v), int(step)))
        if self.local_log is not None:
            self.local_log.parent.mkdir(parents=True, exist_ok=True)
            with self.local_log.open("a") as f:
                f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
        if self.run_id and not self._warned and time.monotonic() - self._last_send >= self.live_every_s:
            self.flush()

    def flush(self) -> bool:
        """Send buffered points; keep them (and warn once) if the server cannot be reached."""
        if not self._pending:
            return True
        if not self.run_id:                       # offline run: history.jsonl has everything
            self._pending.clear()
            return True
        try:
            if not self.tracker.reachable():
                raise ConnectionRefusedError("no TCP connection to the tracking server")
            if self._held is None:
                # A worker restarted from a checkpoint replays the steps after it; normally none of
                # them were sent (we flush at checkpoints), but when the whole job is killed a worker
                # can outlive its controller for a moment, flush at a checkpoint the controller never
                # registered, and the resumed run replays those steps. They are deterministic
                # replays, so the points already held are the same: skip them.
                self._held = self.tracker.last_steps(self.run_id, {k for k, *_ in self._pending})
            self.tracker.log_metrics(self.run_id, [p for p in self._pending if p[2] > self._held.get(p[0], -1)])
        except Exception as e:  # noqa: BLE001 - any transport/store failure: keep training
            if not self._warned:
                _warn(f"MLflow at {self.tracker.uri} is unreachable ({type(e).__name__}: {str(e)[:160]}); "
                      f"training continues, metrics are kept in memory and in {self.local_log} and sent at "
                      "the next successful flush")
                self._warned = True
            return False
        self._pending.clear()
        self._last_send = time.monotonic()
        return True

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        if not self.run_id or not self.tracker.reachable():
            if self.local_log is not None:        # keep the grid beside the history instead
                save_png(self.local_log.parent / artifact_file, image)
            return
        self.tracker.attempt(f"log {artifact_file}", lambda: self.tracker.log_image(self.run_id, image, artifact_file))
