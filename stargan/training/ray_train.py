"""Ray Train wiring: run :func:`stargan.training.worker.run_worker` on N workers with TorchTrainer.

The driver (a DVC stage, ``stargan train``, or a ``ray job submit`` entry point) calls :func:`fit`:
it opens the MLflow run, starts or joins the Ray cluster, and lets Ray Train restart dead workers
from the last checkpoint (``FailureConfig``). The run name is derived from the config, the
shards' checksums and the training code, and Ray Train resumes a run of the same name and storage
path, so re-running an interrupted ``dvc repro`` picks up from the last checkpoint instead of
starting over, while a changed loss or model (which DVC sees as a changed dependency of ``train``)
trains anew instead of "resuming" the finished run of the old code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stargan.codedeps import training_code_digest
from stargan.config import TUNED_FILE, Config, config_from_dict, loss_weights_summary, resolve_tuned, tuned_keys
from stargan.data.shard_source import manifest_bytes, shard_location, shard_root, verify
from stargan.errors import StarganError, one_line
from stargan.storage import open_storage, ray_run_config_kwargs
from stargan.training.capacity import controller_retries, per_worker_resources, wait_for_room
from stargan.tracking import RUN_ID_KEY, RUN_RECORD, RunLogger, Tracker, open_training_run, warn_offline
from stargan.training.checkpoint import FILENAME, CheckpointError, TrainState, load_state, save_state
from stargan.training.errors import TrainingError
from stargan.training.init_from import init_digest, resolve_init_from


@dataclass
class TrainOutcome:
    checkpoint: Path            # final checkpoint copied to train.output_dir
    metrics: dict[str, Any]
    history: Path               # JSON lines of logged scalars
    run_id: str                 # of the tracking run ("" when trained offline)
    tracking_uri: str
    run_name: str


#: In a run's storage folder: why the workers stopped early (bad input, a non-finite loss).
STOP_FILE = "stopped.txt"


def shard_dirs(cfg: Config, repo_root: Path) -> dict[str, str | Path]:
    """Each training dataset's shards: local folders, or their published copy (``shard.uri``)."""
    return {name: shard_location(cfg, repo_root, name) for name in cfg.train.datasets}


#: Knobs of how long to wait, not of what is trained: changing them resumes the same run.
_NOT_IN_RUN_NAME = ("resources_timeout_s",)


def run_name_for(cfg: Config, repo_root: Path) -> str:
    """Same config + same shards + same training code -> same name (Ray resumes it); anything
    else -> a new run."""
    train = cfg.to_dict()["train"]
    train["ray"] = {k: v for k, v in train["ray"].items() if k not in _NOT_IN_RUN_NAME}
    h = hashlib.sha256(json.dumps(train, sort_keys=True).encode())
    h.update(training_code_digest().encode())
    h.update(init_digest(cfg, repo_root).encode())      # train.init_from: what the run starts from
    for name, d in sorted(shard_dirs(cfg, repo_root).items()):
        h.update(name.encode() + manifest_bytes(d))
    return f"stargan-{cfg.train.model}-{h.hexdigest()[:12]}"


class _RayHooks:
    def __init__(self, rank: int):
        self.rank = rank

    def resume(self) -> TrainState | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            try:
                return load_state(Path(d) / FILENAME)
            except CheckpointError as e:
                raise CheckpointError(f"{e}. It is the last checkpoint of this Ray Train run ({ckpt.path}): "
                                      "delete that run's folder to train from scratch") from None

    def report(self, metrics: dict[str, Any], state: TrainState | None) -> None:
        import ray.train

        if state is not None and self.rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_state(state, Path(d))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report at INFO with its whole metrics dict and checkpoint path (a
    ~1,500-character line per checkpoint, twice); the worker's progress line says what matters."""
    for name in list(logging.root.manager.loggerDict):
        if "train/v2/_internal/execution" in name or name.startswith("ray.train.v2._internal.execution"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _worker_entry(config: dict) -> None:
    """``train_loop_per_worker``: runs inside each Ray Train worker process."""
    import ray.train
    import ray.train.torch

    from stargan.training.worker import WorkerContext, run_worker

    _quiet_ray_train_reports()

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_dict(config["params"])
    log_path = Path(config["log_path"])
    wctx = WorkerContext(rank=rank, world_size=world, device=ray.train.torch.get_device(),
                         shard_root=config["shard_root"], log_path=log_path,
                         extra={RUN_ID_KEY: config["run_id"]})
    logger = RunLogger(config["tracking_uri"], config["run_id"], local_log=log_path) if rank == 0 else None
    # Where an operator (or the fault test) finds each worker's process to inspect or kill; on
    # another node of a cluster this node-local folder may not exist yet.
    log_path.parent.mkdir(parents=True, exist_ok=True)
    (log_path.parent / f"worker-{rank}.pid").write_text(str(os.getpid()))
    try:
        result = run_worker(cfg, wctx, _RayHooks(rank), logger)
        message = result.message if result.status != "finished" else ""
    except StarganError as e:
        # Bad input (a checkpoint the weights-only loader refuses, a damaged shard): a restart would
        # meet it again, so end the run with its one-line reason instead of raising into Ray's retries.
        message = one_line(e)
    if message and rank == 0:
        # Ray Train's result carries the metrics of the last *checkpoint*, not of the last report,
        # so the reason goes to the run's storage folder, which the driver reads after fit().
        open_storage(config["storage"], Path(config["repo_root"])).write_text(config["stop_file"], message)


def _wait_for_room(cfg: Config, started_here: bool) -> None:
    """Fixed worker count: wait up to train.ray.resources_timeout_s for the cluster to hold it
    (stargan/training/capacity.py), failing in one line; a local Ray fails at once."""
    import ray

    r = cfg.train.ray
    wait_for_room(r.num_workers, per_worker_resources(r.cpus_per_worker, r.use_gpu), r.resources_timeout_s,
                  can_grow=not started_here, nodes=ray.nodes, echo=lambda m: print(m, flush=True))


def _init_ray(cfg: Config) -> bool:
    """Join the configured cluster (params, then RAY_ADDRESS) or start a local one. Returns True
    when this call started Ray (and so should shut it down). A local one listens on 127.0.0.1
    only (stargan/training/ray_cluster.py, docs/security.md)."""
    from stargan.training.ray_cluster import init_ray

    need = cfg.train.ray.num_workers * cfg.train.ray.cpus_per_worker + 1
    return init_ray(cfg.train.ray.address, num_cpus=max(int(need + 0.999), os.cpu_count() or 1))


def fit(cfg: Config, repo_root: Path, *, run_name: str | None = None) -> TrainOutcome:
    """Train ``cfg`` (as loaded from params: loss weights set to ``tuned`` take the sweep's values
    from ``<repo_root>/tuned.yaml``) on Ray Train, tracked in MLflow; returns where the final model is."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    repo_root = repo_root.resolve()
    tuned = tuned_keys(cfg)
    cfg = resolve_tuned(cfg, repo_root / TUNED_FILE)
    print(f"[stargan] loss weights: {loss_weights_summary(cfg, tuned)}", flush=True)
    for d in shard_dirs(cfg, repo_root).values():
        verify(d)              # fail here, in one line, before Ray starts (workers check their copy too)
    name = run_name or run_name_for(cfg, repo_root)
    cfg = resolve_init_from(cfg, repo_root)      # every worker reads the same file, wherever it runs from
    # Checkpoints and the run record go to train.ray.storage_path: a folder or a URI (s3://, gs://,
    # file://, any fsspec scheme; see stargan/storage.py). history.jsonl and the worker pid files
    # are node-local files: in the storage folder when it is local, else in <repo>/ray_results.
    store = open_storage(cfg.train.ray.storage_path or "ray_results", repo_root)
    run_dir = (store.local_root or repo_root / "ray_results") / name
    run_file, stop_file = f"{name}/{RUN_RECORD}", f"{name}/{STOP_FILE}"
    tracker = Tracker.for_config(cfg, repo_root)
    started = _init_ray(cfg)
    try:
        # Room for the workers first: a run refused for lack of it leaves no MLflow run behind.
        _wait_for_room(cfg, started and not (cfg.train.ray.address or os.environ.get("RAY_ADDRESS")))
        run_dir.mkdir(parents=True, exist_ok=True)
        if store.exists(run_file):
            run_id = json.loads(store.read_text(run_file))["run_id"]
        else:
            run_id = open_training_run(tracker, name, cfg.to_dict()["train"] | {"datasets": cfg.train.datasets},
                                       tags={"stargan.model": cfg.train.model, "stargan.run_name": name,
                                             "stargan.tuned": ",".join(tuned) or "-"})
            store.write_text(run_file, json.dumps({"run_id": run_id, "tracking_uri": tracker.uri}))
        if not run_id:
            warn_offline(tracker, name, run_dir)
        store.delete(stop_file)
        r = cfg.train.ray
        resources = per_worker_resources(r.cpus_per_worker, r.use_gpu)
        trainer = TorchTrainer(
            _worker_entry,
            train_loop_config={"params": cfg.to_dict(), "shard_root": str(shard_root(cfg, repo_root)),
                               "run_id": run_id, "tracking_uri": tracker.uri,
                               "log_path": str(run_dir / "history.jsonl"), "stop_file": stop_file,
                               "storage": store.uri, "repo_root": str(repo_root)},
            scaling_config=ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(name=name, **ray_run_config_kwargs(store),
                                           failure_config=ray.train.FailureConfig(
                                               max_failures=r.max_failures,
                                               controller_failure_limit=controller_retries(r.resources_timeout_s)),
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
        result = trainer.fit()
    finally:
        if started:
            ray.shutdown()
    stopped = store.read_text(stop_file) if store.exists(stop_file) else ""
    return _finish(cfg, repo_root, result, run_dir, run_id, tracker, name, stopped)


def _finish(cfg: Config, repo_root: Path, result: Any, run_dir: Path, run_id: str, tracker: Tracker,
            name: str, stopped: str) -> TrainOutcome:
    """Copy the final checkpoint to train.output_dir and close the tracking run, or raise
    :class:`TrainingError` with why the workers stopped (``stopped``: their one-line reason)."""
    online = bool(run_id) and tracker.reachable()
    if run_id and not online:
        print(f"[stargan] WARNING: MLflow at {tracker.uri} is unreachable at the end of training: run {run_id} "
              "is left open and the checkpoint is not logged to it", file=sys.stderr)
    failure = (f"training failed after {cfg.train.ray.max_failures} restart(s): {result.error}"
               if getattr(result, "error", None) is not None else stopped)
    if failure:
        if online:
            tracker.attempt(f"mark run {run_id} FAILED", lambda: tracker.finish(run_id, "FAILED"))
        raise TrainingError(failure)
    if result.checkpoint is None:
        raise TrainingError("training ended without a checkpoint")
    out_dir = (repo_root / cfg.train.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as d:
        tmp = out_dir / f".{FILENAME}.tmp"
        shutil.copyfile(Path(d) / FILENAME, tmp)
        os.replace(tmp, out_dir / FILENAME)
    if online:      # the model is saved; tracking is not worth failing for
        def close() -> None:
            tracker.log_artifact(run_id, out_dir / FILENAME, "checkpoint")
            tracker.finish(run_id)

        tracker.attempt(f"finish run {run_id}", close)
    if not run_id:
        warn_offline(tracker, name, run_dir)
    return TrainOutcome(checkpoint=out_dir / FILENAME, metrics=dict(result.metrics or {}),
                        history=run_dir / "history.jsonl", run_id=run_id, tracking_uri=tracker.uri, run_name=name)
