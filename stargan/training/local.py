"""Train in this process, without Ray or MLflow: for a single GPU box, debugging, and the GPU
benchmark machine (which has torch but not ray/mlflow). Checkpoints go to ``train.output_dir``
and resume from there; the loop is the same one Ray runs."""
from __future__ import annotations

from pathlib import Path

import torch

from stargan.config import TUNED_FILE, Config, loss_weights_summary, resolve_tuned, tuned_keys
from stargan.data.shard_source import shard_root
from stargan.models.ops import use_compile_cache
from stargan.tracking import RunLogger
from stargan.training.checkpoint import FILENAME, TrainState, load_state, save_state
from stargan.training.errors import TrainingError
from stargan.training.init_from import resolve_init_from
from stargan.training.worker import LoopResult, WorkerContext, run_worker


class LocalHooks:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def resume(self) -> TrainState | None:
        path = self.out_dir / FILENAME
        return load_state(path) if path.exists() else None

    def report(self, metrics: dict, state: TrainState | None) -> None:
        if state is not None:
            save_state(state, self.out_dir)


def fit_local(cfg: Config, repo_root: Path, device: str | None = None) -> LoopResult:
    """Train ``cfg`` (loss weights set to ``tuned`` from ``<repo_root>/tuned.yaml``) in this process."""
    tuned = tuned_keys(cfg)
    cfg = resolve_init_from(resolve_tuned(cfg, repo_root / TUNED_FILE), repo_root)
    print(f"[stargan] loss weights: {loss_weights_summary(cfg, tuned)}", flush=True)
    out_dir = (repo_root / cfg.train.output_dir).resolve()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.train.compile or cfg.train.compile_blocks:     # a rerun loads the compiled kernels from here
        use_compile_cache(str(out_dir / "inductor_cache"))
    ctx = WorkerContext(rank=0, world_size=1, device=dev, shard_root=shard_root(cfg, repo_root),
                        log_path=out_dir / "history.jsonl")
    result = run_worker(cfg, ctx, LocalHooks(out_dir), RunLogger("", "", local_log=out_dir / "history.jsonl"))
    if result.status != "finished":
        raise TrainingError(result.message)
    return result
