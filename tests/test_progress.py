"""The progress line every long stage prints: step/total, rate, ETA, at most every few seconds."""
from __future__ import annotations

import io
import os

from stargan.progress import Progress, duration


def test_lines_are_rate_limited_and_the_last_always_printed(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("stargan.progress.time.monotonic", lambda: now[0])
    out = io.StringIO()
    p = Progress("[classifier] celeba", 10, "steps", every_s=2.0, stream=out, start=0)
    seen = []
    for step in range(1, 11):
        now[0] += 0.5                                    # 2 steps/s
        seen.append(p.due(step))
        if seen[-1]:
            p.update(step, f"loss {1.0 / step:.2f}")
    lines = out.getvalue().splitlines()
    assert seen == [False, False, False, True, False, False, False, True, False, True]
    assert lines[0] == "[classifier] celeba: 4/10 steps (40%), 2 steps/s, ETA 3s, loss 0.25"
    assert lines[-1] == "[classifier] celeba: 10/10 steps (100%), 2 steps/s, loss 0.10"   # no ETA when done
    assert len(lines) == 3


def test_without_a_start_the_rate_counts_from_the_first_update(monkeypatch):
    """A resumed download (or training run): what was done before this process is not its rate."""
    now = [0.0]
    monkeypatch.setattr("stargan.progress.time.monotonic", lambda: now[0])
    out = io.StringIO()
    p = Progress("[train] step", 1000, "steps", every_s=0.0, stream=out)
    p.update(500)
    now[0] = 10.0
    p.update(600)
    assert out.getvalue().splitlines()[-1] == "[train] step: 600/1000 steps (60%), 10 steps/s, ETA 40s"


def test_duration():
    assert [duration(s) for s in (42, 185, 7620)] == ["42s", "3m05s", "2h07m"]


def test_stages_download_mlflow_artifacts_without_a_progress_bar(tmp_path, monkeypatch, capfd):
    """MLflow draws a tqdm bar for every artifact download (export's registration and signature
    check do one): a stage turns it off unless the user asked for it."""
    import mlflow

    from stargan.stage import run_stage

    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "a.txt").write_text("x")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "")    # recorded, so the stage's default is undone after
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"   # passed, never set: mlflow.set_tracking_uri exports
    client = mlflow.MlflowClient(tracking_uri=uri)  # MLFLOW_TRACKING_URI to every later test's subprocesses
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(tmp_path / "a.txt"))

    def download(cfg, root):
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="a.txt", dst_path=str(tmp_path / "out"),
                                            tracking_uri=uri)

    capfd.readouterr()
    assert run_stage("export", download, ["--params", str(tmp_path / "params.yaml")]) == 0
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    assert "Downloading artifacts" not in "".join(capfd.readouterr())
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")          # the user's choice wins
    assert run_stage("export", download, ["--params", str(tmp_path / "params.yaml")]) == 0
    assert "Downloading artifacts" in "".join(capfd.readouterr())
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before and mlflow.get_tracking_uri() != uri   # no leak
