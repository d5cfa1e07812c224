"""Faults survived: a full disk or an unwritable folder while a checkpoint or the shards are written
(a clear error, the previous files intact, no temp files left), and an MLflow tracking server that
cannot be reached (training goes on, metrics kept locally with a warning, uploadable later).

Covered elsewhere, not repeated here: a killed Ray Train worker (test_training_e2e.py), an
interrupted or corrupt download (test_download.py), path traversal in archives (test_archive.py).
Killing the whole `dvc repro` mid-stage is in test_reliability_dvc.py.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stargan.training import checkpoint as ckpt_mod
from stargan.training.checkpoint import CheckpointError, TrainState, load_state, save_state


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def eacces(*_a, **_k):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def state(step: int) -> TrainState:
    g = torch.Generator().manual_seed(step)
    return TrainState(step=step, model="v1", config={"train": {"model": "v1"}},
                      nets={"G": {"w": torch.randn(64, 64, generator=g)}}, optims={}, rng={}, extra={})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("where, fault, reason", [
    ("fsync", enospc, "No space left on device"),           # the disk fills up mid-write
    ("mkstemp", eacces, "Permission denied"),               # the folder is not writable
    ("replace", enospc, "No space left on device"),         # the rename itself fails
])
def test_checkpoint_write_failure_is_clear_and_keeps_the_previous_one(tmp_path, monkeypatch, where, fault, reason):
    path = save_state(state(1), tmp_path)
    before = sha(path)
    target = {"fsync": (ckpt_mod.os, "fsync"), "mkstemp": (ckpt_mod.tempfile, "mkstemp"),
              "replace": (ckpt_mod.os, "replace")}[where]
    monkeypatch.setattr(*target, fault)
    with pytest.raises(CheckpointError) as e:
        save_state(state(2), tmp_path)
    msg = str(e.value)
    assert str(path) in msg and reason in msg and "previous checkpoint there is intact" in msg
    assert "train.output_dir" in msg, "the message says what to change"
    monkeypatch.undo()
    assert sha(path) == before and load_state(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"], "no temp file left behind"


def test_checkpoint_into_a_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*models/train/checkpoint.pt.*nothing was written"):
        save_state(state(1), tmp_path / "models" / "train")


# ------------------------------------------------------------------------------ shards

@pytest.fixture()
def aligned(tmp_path) -> Path:
    from stargan.bench.data import write_aligned_set

    return write_aligned_set(tmp_path / "aligned" / "toy", n=40, image_size=16, split=None, identities=10)


def _shard_cfg():
    from stargan.config import ShardConfig

    return ShardConfig(rows_per_group=4, rows_per_shard=12, test_fraction=0.2)


def _tree(d: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(d.iterdir())}


@pytest.mark.parametrize("where", ["write_table", "swap"])
def test_shard_write_failure_is_clear_and_keeps_the_previous_shards(aligned, tmp_path, monkeypatch, where):
    import pyarrow.parquet as pq

    from stargan.data import shards
    from stargan.data.shards import ShardError, verify_shards, write_shards

    out = tmp_path / "shards" / "toy"
    write_shards(aligned, out, _shard_cfg(), name="toy")
    before = _tree(out)
    if where == "write_table":          # the disk fills up after a few row groups
        real, calls = pq.ParquetWriter.write_table, []

        def write_table(self, *a, **k):
            calls.append(1)
            if len(calls) == 3:
                enospc()
            return real(self, *a, **k)
        monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    else:                               # the final rename of the new folder over the old one fails
        real_replace = os.replace

        def replace(src, dst):
            if ".tmp-" in str(src):
                enospc()
            return real_replace(src, dst)
        monkeypatch.setattr(shards.os, "replace", replace)
    with pytest.raises(ShardError) as e:
        write_shards(aligned, out, _shard_cfg(), name="toy")
    msg = str(e.value)
    assert f"cannot write shards to {out}" in msg and "No space left on device" in msg
    assert "previous shards there are intact" in msg and "dvc repro shard" in msg
    monkeypatch.undo()
    assert _tree(out) == before, "the previous shards are byte-identical"
    verify_shards(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"], "no temp/old folder left behind"


def test_leftovers_of_a_killed_shard_run_are_cleaned_up(aligned, tmp_path):
    from stargan.data.shards import write_shards

    out = tmp_path / "shards" / "toy"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for kind in ("tmp", "old"):
        (out.parent / f".toy.{kind}-{dead.pid}" / "x").mkdir(parents=True)
    (out.parent / f".toy.tmp-{os.getpid() + 10**7}").mkdir()   # not a live pid either
    (out.parent / ".other.tmp-1").mkdir()                          # another dataset's: not ours to remove
    write_shards(aligned, out, _shard_cfg(), name="toy")
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.tmp-1", "toy"]


# ------------------------------------------------------------------------------ MLflow

def test_unreachable_tracking_server_keeps_metrics_locally_and_sends_them_later(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from stargan.tracking import RunLogger, Tracker

    db = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id = Tracker(db, "exp", (tmp_path / "art").as_uri()).start_run("r", {"a": 1})
    dead = f"http://127.0.0.1:{closed_port()}"
    log = RunLogger(dead, run_id, local_log=tmp_path / "run" / "history.jsonl")
    t0 = time.perf_counter()
    for step in (10, 20):
        log.log_metrics({"D/loss": step / 10}, step)
        assert log.flush() is False
    log.log_image(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy(), "samples/000020.png")
    assert time.perf_counter() - t0 < 20, "an unreachable server must not stall training on client retries"
    err = capsys.readouterr().err
    assert err.count("WARNING: MLflow at") == 1 and "training continues" in err and "history.jsonl" in err
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [10, 20]
    assert (tmp_path / "run" / "samples" / "000020.png").exists(), "sample grids are kept beside the history"
    # the server is back: the next flush sends everything that was held back, once
    log.tracker = Tracker(db)
    log.log_metrics({"D/loss": 3.0}, 30)
    assert log.flush() is True and log.flush() is True
    steps = [m.step for m in MlflowClient(db).get_metric_history(run_id, "D/loss")]
    assert steps == [10, 20, 30]


def test_driver_degrades_to_an_offline_run_fast_and_says_how_to_upload(tmp_path, capsys):
    from stargan.tracking import Tracker, open_training_run, warn_offline

    tracker = Tracker(f"http://127.0.0.1:{closed_port()}")
    t0 = time.perf_counter()
    assert open_training_run(tracker, "stargan-v1-x", {}, {}) == ""
    assert time.perf_counter() - t0 < 10
    warn_offline(tracker, "stargan-v1-x", tmp_path / "run")
    err = capsys.readouterr().err
    assert "unreachable" in err and "WITHOUT MLflow tracking" in err
    assert f"stargan mlflow-upload {tmp_path / 'run'}" in err


def test_offline_logger_writes_history_only(tmp_path):
    from stargan.tracking import RunLogger

    log = RunLogger("http://127.0.0.1:9", "", local_log=tmp_path / "history.jsonl")
    log.log_metrics({"G/loss": 1.5}, 4)
    assert log.flush() is True and "client" not in vars(log.tracker), "an offline run never builds an MLflow client"
    assert json.loads((tmp_path / "history.jsonl").read_text()) == {"step": 4, "G/loss": 1.5}


def test_mlflow_upload_command_sends_a_kept_history(tmp_path):
    from mlflow.tracking import MlflowClient

    from stargan.cli import main
    from tiny_project import write_params

    write_params(tmp_path, {"train": {"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}}})
    run_dir = tmp_path / "ray_results" / "stargan-v1-abc"
    run_dir.mkdir(parents=True)
    (run_dir / "history.jsonl").write_text("".join(json.dumps({"step": s, "D/loss": s * 0.1, "G/loss": 1.0}) + "\n"
                                                   for s in (2, 4, 6)))
    (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": "", "tracking_uri": "http://x"}))
    assert main(["mlflow-upload", "--params", str(tmp_path / "params.yaml"), str(run_dir)]) == 0
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.get_run(run_id)
    assert run.info.run_name == "stargan-v1-abc" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "D/loss")] == [2, 4, 6]


@pytest.mark.slow
def test_training_with_an_unreachable_tracking_server_finishes_and_keeps_the_history(tmp_path):
    """`stargan train` on Ray with train.mlflow.tracking_uri at a closed port: it warns, trains to the
    end, writes the checkpoint and the full history; `stargan mlflow-upload` sends it afterwards."""
    from mlflow.tracking import MlflowClient

    from tiny_project import build_data, env

    root = build_data(tmp_path, {"train": {"mlflow": {"tracking_uri": f"http://127.0.0.1:{closed_port()}"}}})
    proc = subprocess.run([sys.executable, "-m", "stargan.cli", "train"], cwd=root, env=env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WITHOUT MLflow tracking" in proc.stderr and "stargan mlflow-upload" in proc.stderr
    out = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert out["mlflow_run_id"] == "" and load_state(out["checkpoint"]).step == 6
    run_dir = next((root / "ray_results").glob("stargan-*"))
    steps = [json.loads(ln)["step"] for ln in (run_dir / "history.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert (run_dir / "samples" / "000006.png").exists()
    db = f"sqlite:///{root / 'up.db'}"
    up = subprocess.run([sys.executable, "-m", "stargan.cli", "mlflow-upload", "-S",
                         f"train.mlflow.tracking_uri={db}", str(run_dir)], cwd=root, env=env(),
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr[-3000:]
    run_id = json.loads(up.stdout)["mlflow_run_id"]
    assert [m.step for m in MlflowClient(db).get_metric_history(run_id, "D/loss")] == [2, 4, 6]


def test_a_checkpoint_from_before_the_residual_knob_reads_as_the_papers_generator():
    from stargan.config import Config
    from stargan.training.checkpoint import check_compatible

    old = Config().to_dict()
    del old["train"]["v1"]["residual"]                  # written before train.v1.residual existed
    state = TrainState(step=10, model="v1", config=old, nets={})
    check_compatible(state, Config().to_dict())         # the paper's G: compatible
    residual = Config().to_dict()
    residual["train"]["v1"]["residual"] = True
    with pytest.raises(CheckpointError, match=r"train.v1.residual: checkpoint has False, params have True"):
        check_compatible(state, residual)


def test_a_residual_checkpoint_from_before_the_scale_knob_keeps_its_range():
    """The first residual G moved a pixel by at most tanh's 1; reading its checkpoint as the new
    default (2) would double every change it learnt, so the missing key reads as 1 and a params
    file asking for 2 is refused, naming the key."""
    from stargan.config import Config, config_from_dict
    from stargan.training.checkpoint import check_compatible

    old = Config().to_dict()
    old["train"]["v1"]["residual"] = True
    del old["train"]["v1"]["residual_scale"]            # written before train.v1.residual_scale existed
    state = TrainState(step=10, model="v1", config=old, nets={})
    now = Config().to_dict()
    now["train"]["v1"]["residual"] = True
    check_compatible(state, now)                        # Config's default scale is the old one: compatible
    assert config_from_dict(old).train.v1.residual_scale == 1.0
    now["train"]["v1"]["residual_scale"] = 2.0
    with pytest.raises(CheckpointError, match=r"train.v1.residual_scale: checkpoint has 1.0, params have 2.0"):
        check_compatible(state, now)
