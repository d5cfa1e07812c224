"""Train in this process, without Ray or MLflow: for a single GPU box, debugging, and the GPU
benchmark machine (which has torch but not ray/mlflow). Checkpoints go to ``train.output_dir``
and resume from there; the loop is the same one Ray runs."""
from __future__ import annotations

from pathlib import Path

import torch

from stargan.config import Config
from stargan.training.checkpoint import FILENAME, TrainState, load_state, save_state
from stargan.training.errors import TrainingError
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


class _PrintLogger:
    """Stands in for the MLflow logger: history to a JSON-lines file, grids to PNG files."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / "history.jsonl"

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())), flush=True)

    def log_image(self, image, artifact_file: str) -> None:
        from stargan.visualize import save_png

        save_png(self.out_dir / artifact_file, image)

    def flush(self) -> bool:
        return True


def fit_local(cfg: Config, repo_root: Path, device: str | None = None) -> LoopResult:
    out_dir = (repo_root / cfg.train.output_dir).resolve()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = WorkerContext(rank=0, world_size=1, device=dev, shard_root=(repo_root / cfg.data.root / "shards").resolve(),
                        log_path=out_dir / "history.jsonl")
    result = run_worker(cfg, ctx, LocalHooks(out_dir), _PrintLogger(out_dir))
    if result.status != "finished":
        raise TrainingError(result.message)
    return result
