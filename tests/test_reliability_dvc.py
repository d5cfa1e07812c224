"""Kill the whole `dvc repro` (SIGKILL to its process group) in the middle of `shard` and of
`train`; a rerun ends with exactly the outputs of an uninterrupted run.

Each test builds a real DVC repository in a temp folder (git init, dvc init, the project's
dvc.yaml and pipelines/, a symlink to stargan/ so the code deps hash, tiny params) and runs
`dvc repro <stage>` as a user would.

- shard: the shard writer is slowed down (a ``sitecustomize`` on PYTHONPATH, active only in the
  shard stage's process and only with an env var) so the kill lands while parquet files are being
  written; the rerun redoes the stage and the shards are byte-identical.
- train: the kill lands after the first Ray Train checkpoint; the rerun resumes the same Ray Train
  run (its name comes from the params, the shards' checksums and the training code,
  ray_train.run_name_for) from that
  checkpoint, and the final checkpoint's tensors are bit-identical to an uninterrupted run's;
  MLflow holds each logged step once.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiny_project import REPO, env, write_params

pytestmark = pytest.mark.slow

SITECUSTOMIZE = '''
import os, sys, time
_marker = os.environ.get("STARGAN_TEST_SLOW_SHARD")
if _marker and sys.argv and sys.argv[0].endswith("shard.py"):
    import pyarrow.parquet as _pq
    _real = _pq.ParquetWriter.write_table
    def _slow(self, *a, **k):
        open(_marker, "a").write("x")
        time.sleep(0.4)
        return _real(self, *a, **k)
    _pq.ParquetWriter.write_table = _slow
'''


def dvc(root: Path, *args: str, extra_env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env={**env(), **(extra_env or {})},
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_repo(root: Path, overrides: dict) -> Path:
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):    # run outputs (mlruns.db, ray_results) stay out of git
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "pipelines", root / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "stargan").symlink_to(REPO / "stargan", target_is_directory=True)
    write_params(root, overrides)       # tiny params: fixed loss weights, so the tune stage runs no sweep
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                ["git", "config", "user.name", "t"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    dvc(root, "init", "-q")
    dvc(root, "config", "core.site_cache_dir", str(root / ".dvc" / "site"))
    dvc(root, "config", "core.analytics", "false")
    return root


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    dvc(dst, "config", "core.site_cache_dir", str(dst / ".dvc" / "site"))
    return dst


def tree_hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def start(root: Path, *args: str, extra_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), *args], cwd=root,
                            env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return out


TRAIN = {"train": {"num_iters": 40, "log_every": 5, "checkpoint_every": 10, "sample_every": 1000,
                   "v1": {"num_iters_decay": 20}}}


@pytest.fixture(scope="module")
def aligned_repo(tmp_path_factory) -> Path:
    root = make_repo(tmp_path_factory.mktemp("dvc") / "base", TRAIN)
    dvc(root, "repro", "align")
    return root


def test_dvc_repro_killed_during_shard_redoes_it_to_the_same_bytes(aligned_repo, tmp_path):
    killed = copy_repo(aligned_repo, tmp_path / "killed")
    dvc(aligned_repo, "repro", "shard")                       # the uninterrupted run
    want = tree_hashes(aligned_repo / "data" / "shards")
    assert any(k.endswith(".parquet") for k in want)

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "writing"
    proc = start(killed, "repro", "shard", extra_env={"PYTHONPATH": str(tmp_path / "site"),
                                                       "STARGAN_TEST_SLOW_SHARD": str(marker)})
    deadline = time.time() + 120
    while not (marker.exists() and len(marker.read_text()) >= 2) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the shard stage ended before it could be killed:\n{proc.communicate()[0][-3000:]}"
    kill_group(proc)
    shards = killed / "data" / "shards"
    assert not (shards / "celeba" / "manifest.json").exists() or tree_hashes(shards) != want, \
        "the kill landed mid-stage (no complete output yet)"

    dvc(killed, "repro", "shard")                             # rerun: redoes the stage
    assert tree_hashes(shards) == want, "the rerun's shards are byte-identical to an uninterrupted run's"
    assert dvc(killed, "status", "shard").stdout.strip().endswith("up to date.") or \
        "changed" not in dvc(killed, "status", "shard").stdout


def test_dvc_repro_killed_during_train_resumes_to_the_same_weights(aligned_repo, tmp_path):
    from mlflow.tracking import MlflowClient

    from stargan.config import load_config
    from stargan.training.checkpoint import load_state
    from stargan.training.local import fit_local

    dvc(aligned_repo, "repro", "shard")
    repo = copy_repo(aligned_repo, tmp_path / "train")
    proc = start(repo, "repro", "train")
    deadline, seen = time.time() + 240, 0
    while proc.poll() is None and time.time() < deadline:
        hist = list((repo / "ray_results").glob("stargan-*/history.jsonl"))
        if hist:
            steps = [json.loads(ln)["step"] for ln in hist[0].read_text().splitlines() if ln.strip()]
            seen = steps[-1] if steps else 0
            if seen >= 15:                                    # past the checkpoint at step 10
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed:\n{proc.communicate()[0][-3000:]}"
    kill_group(proc)
    assert not (repo / "models" / "train" / "checkpoint.pt").exists()
    time.sleep(2)                                             # let Ray's fate-shared processes go

    rerun = dvc(repo, "repro", "train")                       # resumes the same Ray Train run
    got = load_state(repo / "models" / "train" / "checkpoint.pt")
    cfg = load_config(repo / "params.yaml")
    assert got.step == cfg.train.num_iters

    ref_root = tmp_path / "reference"                         # the uninterrupted run, same loop
    shutil.copytree(repo / "data" / "shards", ref_root / "data" / "shards")
    shutil.copy(repo / "params.yaml", ref_root / "params.yaml")
    fit_local(cfg, ref_root)
    want = load_state(ref_root / cfg.train.output_dir / "checkpoint.pt")
    for net in want.nets:
        for key, t in want.nets[net].items():
            assert torch.equal(t, got.nets[net][key]), f"{net}.{key} differs from the uninterrupted run"

    resumed = [int(m) for m in re.findall(r"resuming from the checkpoint at step (\d+)", rerun.stdout + rerun.stderr)]
    assert resumed and resumed[0] >= cfg.train.checkpoint_every, \
        f"the rerun did not resume from the killed run's checkpoint:\n{rerun.stdout[-3000:]}"
    run_dir = next((repo / "ray_results").glob("stargan-*"))
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    steps = [m.step for m in MlflowClient(f"sqlite:///{repo / 'mlruns.db'}").get_metric_history(run_id, "D/loss")]
    assert steps == list(range(5, cfg.train.num_iters + 1, 5)), "each step logged once across the kill"
    assert dvc(repo, "status", "train").returncode == 0
