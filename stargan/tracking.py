"""MLflow tracking for training runs: one run per training run, written by rank 0 only.

Why metrics are buffered and flushed at checkpoints: a worker that dies is restarted from the
last checkpoint and replays the steps after it. Flushing exactly at checkpoint boundaries makes
every logged step final, so a restart never logs a step twice (MLflow cannot delete points).
If the tracking server is unreachable, training goes on: points stay in the buffer and are also
appended to a local JSON-lines file beside the checkpoint, and a warning says so; the next
successful flush sends everything that was held back.

If the server cannot be reached when training *starts*, the driver does not fail either: it
warns, trains with an offline logger (``run_id == ""``: metrics go to ``history.jsonl`` only)
and says how to send the history later (:func:`upload_history`, ``stargan mlflow-upload``).
HTTP tracking URIs are probed with a plain TCP connect first (:func:`server_reachable`), because
MLflow's client retries a refused connection with exponential backoff for minutes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DB = "mlruns.db"


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
    import subprocess

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
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def upload_history(tracking_uri: str, experiment: str, run_name: str, history: Path,
                   params: dict | None = None, artifact_location: str | None = None) -> str:
    """Send a run's ``history.jsonl`` (written while MLflow was unreachable) as a new MLflow run;
    returns its id. Each line is ``{"step": n, "<metric>": value, ...}``."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment(tracking_uri, experiment, artifact_location or "mlartifacts")
    run_id = start_run(tracking_uri, exp_id, run_name, params or {}, tags={"stargan.uploaded_from": str(history)})
    ts = int(time.time() * 1000)
    points = [Metric(k, float(v), ts, int(row["step"]))
              for row in (json.loads(ln) for ln in Path(history).read_text().splitlines() if ln.strip())
              for k, v in row.items() if k != "step"]
    client = MlflowClient(tracking_uri)
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i:i + 1000])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=f"{artifact_location.rstrip('/')}/{name}")


def start_run(tracking_uri: str, experiment_id: str, run_name: str, params: dict, tags: dict | None = None,
              repo_root: Path | None = None) -> str:
    """A new run with ``params`` (flattened) and ``tags`` (+ :func:`provenance_tags` of ``repo_root``)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    tags = (provenance_tags(repo_root) if repo_root is not None else {}) | (tags or {})
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    flat = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
    for i in range(0, len(flat), 100):
        client.log_batch(run.info.run_id, params=flat[i:i + 100])
    return run.info.run_id


class RunLogger:
    """Rank-0 logger bound to an existing MLflow run id (created by the driver); ``run_id == ""``
    is an offline run: metrics go to ``local_log`` only."""

    def __init__(self, tracking_uri: str, run_id: str, local_log: Path | None = None):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.local_log = local_log
        self._pending: list[tuple[str, float, int, int]] = []
        self._client = None
        self._warned = False
        self._held: dict[str, int] | None = None    # last step the run already holds, per metric

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            self._pending.append((k, float(v), ts, int(step)))
        if self.local_log is not None:
            self.local_log.parent.mkdir(parents=True, exist_ok=True)
            with self.local_log.open("a") as f:
                f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def flush(self) -> bool:
        """Send buffered points; keep them (and warn once) if the server cannot be reached."""
        from mlflow.entities import Metric

        if not self._pending:
            return True
        if not self.run_id:                       # offline run: history.jsonl has everything
            self._pending.clear()
            return True
        try:
            if not server_reachable(self.tracking_uri):
                raise ConnectionRefusedError("no TCP connection to the tracking server")
            if self._held is None:
                self._held = self._steps_held({k for k, *_ in self._pending})
            batch = [Metric(k, v, ts, s) for k, v, ts, s in self._pending if s > self._held.get(k, -1)]
            for i in range(0, len(batch), 1000):
                self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        except Exception as e:  # noqa: BLE001 - any transport/store failure: keep training
            if not self._warned:
                print(f"[stargan] WARNING: MLflow at {self.tracking_uri} is unreachable ({type(e).__name__}: "
                      f"{str(e)[:160]}); training continues, metrics are kept in memory and in "
                      f"{self.local_log} and sent at the next successful flush", file=sys.stderr)
                self._warned = True
            return False
        self._pending.clear()
        return True

    def _steps_held(self, keys: set[str]) -> dict[str, int]:
        """The last step of each metric the run already holds. A worker restarted from a checkpoint
        replays the steps after it; normally none of them were sent (we flush at checkpoints), but
        when the whole job is killed a worker can outlive its controller for a moment, flush at a
        checkpoint the controller never registered, and the resumed run replays those steps. They
        are deterministic replays, so the points already held are the same: skip them."""
        return {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)), default=-1) for k in keys}

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        if not self.run_id or not server_reachable(self.tracking_uri):
            if self.local_log is not None:        # keep the grid beside the history instead
                from stargan.visualize import save_png
                save_png(self.local_log.parent / artifact_file, image)
            return
        try:
            self.client.log_image(self.run_id, image, artifact_file=artifact_file)
        except Exception as e:  # noqa: BLE001
            print(f"[stargan] WARNING: could not log {artifact_file} to MLflow: {e}", file=sys.stderr)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.run_id:
            return
        try:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as e:  # noqa: BLE001
            print(f"[stargan] WARNING: could not log {path} to MLflow: {e}", file=sys.stderr)
