"""Scale out for real, on one host: shards and checkpoints on an S3 API (moto's server on
127.0.0.1, spoken to over HTTP), a Ray cluster of two raylets started with `ray start`, the job
sent with `ray job submit`, a whole node killed mid-run, the driver killed and the job sent again.

Fast tests (no Ray): publishing and streaming shards from the object store, damaged objects,
transient network errors, credentials in URIs, the capacity rule. The slow test runs the cluster
story end to end and compares its weights with an uninterrupted run on the same cluster.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from object_store import SECRET_KEY, FlakyProxy, free_port, start_s3
from stargan.bench.data import write_aligned_set
from stargan.config import ShardConfig
from stargan.data import remote_shards as remote_mod
from stargan.data.loader import BalancedStream, TrainStream, iter_split
from stargan.data.remote_shards import RemoteShards, publish_shards, remote_shards
from stargan.data.shards import ShardError, write_shards
from stargan.storage import StorageError, open_storage
from stargan.training.capacity import wait_for_room, workers_that_fit
from stargan.training.errors import TrainingError

BUCKET = "stargan"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port; this process and its children get the standard AWS
    variables (credentials from the environment only)."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in server.env().items():
            mp.setenv(k, v)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    server.stop()


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> Path:
    # 150 train images in 15 row groups of 10 (4 files), 3 multi-label attributes
    root = tmp_path_factory.mktemp("toy")
    al = write_aligned_set(root / "aligned", n=150, image_size=16, split="train", label_names=["A", "B", "C"],
                           label_kind="multi")
    write_shards(al, root / "shards", ShardConfig(rows_per_group=10, rows_per_shard=40))
    return root / "shards"


@pytest.fixture(scope="module")
def published(s3, local_shards) -> str:
    uri = f"s3://{BUCKET}/shards/toy"
    publish_shards(local_shards, uri, local_shards.parent)
    return uri


def _fresh(uri: str) -> RemoteShards:
    remote_mod._OPEN.pop(uri, None)
    return remote_shards(uri)


# ------------------------------------------------------------------------ shards on S3

def test_published_shards_stream_the_same_batches_as_local_ones(s3, local_shards, published):
    keys = s3.all_keys()[BUCKET]
    assert sorted(k for k in keys if k.startswith("shards/toy/")) == sorted(
        ["shards/toy/manifest.json"] + [f"shards/toy/train-{i:05d}.parquet" for i in range(4)])
    for rank in (0, 1):
        rs = _fresh(published)
        local = TrainStream(local_shards, batch_size=8, image_size=16, rank=rank, world_size=2, seed=3)
        remote = TrainStream(published, batch_size=8, image_size=16, rank=rank, world_size=2, seed=3)
        a, b = iter(local), iter(remote)
        for i in range(8):                                # 64 rows: inside the rank's first epoch
            x, y = next(a), next(b)
            assert x["key"] == y["key"] and torch.equal(x["image"], y["image"]), f"rank {rank} batch {i}"
        # its own row groups of this epoch, plus the read-ahead of the next epoch's first window
        own = {remote.units[u].key for e in (0, 1) for u in remote._layout.epoch(e).units}
        assert rs.fetched_units and rs.fetched_units <= own, "a rank fetches only its own row groups"
        assert rs.stats["prefetched"] > 0, "windows after the first come from the read-ahead"
    rows = lambda d: [(r["key"], r["image"].tolist()) for batch in iter_split(d, "train", 7, 16)  # noqa: E731
                      for r in ({"key": k, "image": im} for k, im in zip(batch["key"], batch["image"]))]
    assert rows(local_shards) == rows(published)


def test_v2_stream_reads_the_published_copy(published, local_shards):
    kw = dict(domains=["A", "B"], batch_size=4, image_size=16, seed=1)
    local, remote = BalancedStream(local_shards, **kw).make_batch(5), BalancedStream(published, **kw).make_batch(5)
    assert local["key_src"] == remote["key_src"] and torch.equal(local["x_ref"], remote["x_ref"])


def test_a_damaged_or_missing_object_is_refused_in_one_line(s3, local_shards):
    uri = f"s3://{BUCKET}/shards/damaged"
    publish_shards(local_shards, uri, local_shards.parent)
    c = s3.client()
    key = "shards/damaged/train-00001.parquet"
    data = bytearray(c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    offset = json.loads(c.get_object(Bucket=BUCKET, Key="shards/damaged/manifest.json")["Body"].read())[
        "files"][1]["remote"]["row_groups"][2][0]
    data[offset + 100] ^= 0xFF                                     # one flipped bit pattern, same size
    c.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    rs = _fresh(uri)
    rs.read_row_group("train-00001.parquet", 0, ["key"])           # an intact row group of that file reads
    with pytest.raises(ShardError) as e:
        rs.read_row_group("train-00001.parquet", 2, ["key"])
    msg = str(e.value)
    assert f"s3://{BUCKET}/shards/damaged/train-00001.parquet: sha256 of row group 2 differs" in msg
    assert "publish it again" in msg and "\n" not in msg and rs.stats["retried"] == 2
    c.delete_object(Bucket=BUCKET, Key="shards/damaged/train-00003.parquet")
    with pytest.raises(ShardError, match=r"shards/damaged/train-00003.parquet: missing \(manifest.json lists \d+ bytes\)"):
        _fresh(uri).manifest()


def test_transient_network_errors_are_retried_then_named(s3, published, monkeypatch):
    proxy = FlakyProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    try:
        uri = f"{published}?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"
        rs = _fresh(uri)
        rs.manifest()
        proxy.fail = 6                           # six connections reset: more than pyarrow's own retries
        t0 = time.perf_counter()
        table = rs.read_row_group("train-00002.parquet", 1, ["key"])
        assert table.num_rows == 10 and proxy.dropped == 6 and proxy.fail == 0
        print(f"read through 6 resets in {time.perf_counter() - t0:.1f} s")
        rs2 = _fresh(uri.replace(published, f"s3://{BUCKET}/shards/toy"))
        rs2._manifest = rs.manifest()
        proxy.fail = 10 ** 6                     # down for good (2 tries here: pyarrow's own retries back off
        monkeypatch.setattr(remote_mod, "RETRIES", 2)   # for ~6 s inside each, 33 s for the default 5)
        with pytest.raises(ShardError, match=r"bytes \d+\.\.\d+: failed 2 times, last: .*Check the endpoint"):
            rs2.read_row_group("train-00000.parquet", 0, ["key"])
    finally:
        proxy.fail = 0
        proxy.close()


@pytest.mark.parametrize("uri, shown", [
    (f"s3://AKIAEXAMPLE:{SECRET_KEY}@{BUCKET}/runs", "user:password@"),
    (f"s3://{BUCKET}/runs?access_key=AKIAEXAMPLE&secret_key={SECRET_KEY}", "access_key, secret_key"),
])
def test_credentials_in_a_uri_are_refused_without_repeating_them(tmp_path, uri, shown):
    with pytest.raises(StorageError) as e:
        open_storage(uri, tmp_path, what="shard.uri")
    msg = str(e.value)
    assert msg.startswith("shard.uri: the URI carries credentials") and shown in msg
    assert SECRET_KEY not in msg and "AWS_SECRET_ACCESS_KEY" in msg


# --------------------------------------------------------------------- capacity rule

def _node(cpu: float, gpu: float = 0.0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpu} | ({"GPU": gpu} if gpu else {})}


def test_workers_fit_per_node_and_only_on_live_nodes():
    per = {"CPU": 2.0, "GPU": 1.0}
    assert workers_that_fit([_node(8, 4), _node(3, 1), _node(64, 8, alive=False)], per) == 5
    assert workers_that_fit([_node(1.5), _node(1.5)], {"CPU": 1.0}) == 2     # 3 CPUs, but 1 worker per node


def test_too_few_resources_waits_with_a_message_then_fails_or_starts():
    said: list[str] = []
    with pytest.raises(TrainingError) as e:
        wait_for_room(2, {"CPU": 1.0, "GPU": 1.0}, 0.3, can_grow=True, nodes=lambda: [_node(4, 1)],
                      echo=said.append, poll_s=0.05)
    msg = str(e.value)
    assert "train.ray.num_workers=2 needs 2 x {'CPU': 1.0, 'GPU': 1.0}, the cluster has room for 1" in msg
    assert "waited 0.3 s (train.ray.resources_timeout_s)" in msg and "does not shrink" in msg
    assert len(said) == 1 and said[0].startswith("[stargan] waiting up to 0.3 s for room")
    with pytest.raises(TrainingError, match="local Ray that no node can join"):
        wait_for_room(1, {"CPU": 1.0, "GPU": 1.0}, 600, can_grow=False, nodes=lambda: [_node(2)], echo=said.append)
    joined = iter([[_node(1)], [_node(1)], [_node(1), _node(1)]])         # a node joins on the third look
    said.clear()
    wait_for_room(2, {"CPU": 1.0}, 30, can_grow=True, nodes=lambda: next(joined), echo=said.append, poll_s=0.01)
    assert [m.split(":")[0] for m in said] == ["[stargan] waiting up to 30 s for room",
                                             "[stargan] the cluster has room for the 2 worker(s) now; starting"]


# ------------------------------------------------------------- a two-node cluster, for real

RAY = str(Path(sys.executable).parent / "ray")
N_ITERS = 80


class RayNodes:
    """Raylets started with `ray start --block` on 127.0.0.1, each with its own temp dir, ports and
    a custom resource naming it; stopped by pid (never `ray stop`, which stops every Ray of the user)."""

    def __init__(self, env: dict[str, str]):
        self.env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.temp_dirs: list[Path] = []

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dash_port}"

    def start(self, name: str, head: bool = False) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f"sg-{name}-", dir="/tmp"))      # short: unix socket paths
        self.temp_dirs.append(tmp)
        args = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={tmp}", "--num-cpus=1",
                f"--resources={json.dumps({f'node_{name}': 1})}", f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        args += ([ "--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash_port}",
                   f"--ray-client-server-port={free_port()}"] if head else [f"--address=127.0.0.1:{self.gcs_port}"])
        self.nodes[name] = subprocess.Popen(args, env=self.env, stdout=open(tmp / "start.log", "w"),
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for(f"node_{name}")

    def wait_for(self, resource: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while True:
            st = subprocess.run([RAY, "status", f"--address=127.0.0.1:{self.gcs_port}"], env=self.env,
                                capture_output=True, text=True, timeout=60)
            if st.returncode == 0 and f"/1.0 {resource}" in st.stdout:
                return
            assert time.time() < deadline, f"{resource} never joined: {st.stdout[-1500:]} {st.stderr[-1500:]}"
            time.sleep(1)

    def kill(self, name: str) -> int:
        """SIGKILL the node's `ray start`, its raylet, agents and every worker the raylet started."""
        proc = self.nodes.pop(name)
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
        return len(victims)

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + (["head"] if "head" in self.nodes else []):
            proc = self.nodes.pop(name)
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            for p in tree:                      # a node whose head is gone may not exit on its own
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass


class Job:
    """`ray job submit` of `stargan train` in the project folder, its output collected as it comes."""

    def __init__(self, nodes: RayNodes, root: Path, sub_id: str):
        self.id = sub_id
        self.lines: list[str] = []
        self.proc = subprocess.Popen([RAY, "job", "submit", "--address", nodes.dashboard, "--submission-id", sub_id,
                                      "--", "bash", "-c", f"cd {root} && {sys.executable} -m stargan.cli train"],
                                     env=nodes.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while what not in self.text:
            assert self.proc.poll() is None or what in self.text, f"job ended before {what!r}:\n{self.text[-4000:]}"
            assert time.time() < deadline, f"no {what!r} after {timeout} s:\n{self.text[-4000:]}"
            time.sleep(0.3)

    def result(self, timeout: float = 400) -> dict:
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.5)
        assert rc == 0, self.text[-5000:]
        t = self.text
        return json.loads(t[t.index('{\n  "checkpoint"'):t.rindex("}") + 1])


def _history_steps(root: Path) -> list[int]:
    hist = list((root / "ray_results").glob("stargan-*/history.jsonl"))
    return [json.loads(ln)["step"] for ln in hist[0].read_text().splitlines() if ln.strip()] if hist else []


def _wait_step(root: Path, job: Job, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (s := _history_steps(root)) or s[-1] < step:
        assert job.proc.poll() is None, f"job ended before step {step}:\n{job.text[-4000:]}"
        assert time.time() < deadline, f"step {step} not reached in {timeout} s (at {s[-1:]})"
        time.sleep(0.2)


def _project(root: Path, storage: str, output_dir: str, **ray_over) -> dict:
    return {"shard": {"uri": f"s3://{BUCKET}/proj/shards"},
            "train": {"num_iters": N_ITERS, "log_every": 10, "checkpoint_every": 20, "sample_every": 40,
                      "output_dir": output_dir,
                      "ray": {"num_workers": 2, "cpus_per_worker": 1.0, "max_failures": 3,
                              "storage_path": f"s3://{BUCKET}/proj/{storage}", "resources_timeout_s": 300} | ray_over,
                      "mlflow": {"artifact_root": f"s3://{BUCKET}/proj/mlartifacts"}}}


@pytest.fixture
def ray_temp_dirs():
    """The nodes' temp dirs (under /tmp: Ray's socket paths must stay short), removed afterwards."""
    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_two_node_cluster_on_s3_survives_a_lost_node_and_a_lost_driver(s3, tmp_path, ray_temp_dirs):
    from mlflow.tracking import MlflowClient

    from stargan.training.checkpoint import load_state
    from tiny_project import build_data, env, write_params

    t0 = time.perf_counter()
    root = build_data(tmp_path / "proj", _project(tmp_path, "runs-faults", "models/faults"))
    timings = {"shard stages": time.perf_counter() - t0}
    nodes = RayNodes(env())
    nodes.temp_dirs = ray_temp_dirs
    try:
        nodes.start("head", head=True)
        timings["head up"] = time.perf_counter() - t0
        # 1. sent to a one-node cluster: the run waits for room for its 2 workers, says so, and
        #    starts when the second node joins
        job = Job(nodes, root, "faults-1")
        job.wait_for("[stargan] waiting up to 300 s for room: train.ray.num_workers=2 needs 2 x {'CPU': 1.0}, "
                     "the cluster has room for 1")
        nodes.start("b")
        job.wait_for("the cluster has room for the 2 worker(s) now")
        # 2. a whole node lost mid-run (raylet, agents, its training worker), a replacement joins
        _wait_step(root, job, 30)
        killed = nodes.kill("b")
        timings["node b killed"] = time.perf_counter() - t0
        nodes.start("b2")
        job.wait_for("[stargan] resuming from the checkpoint at step ")
        # 3. the driver lost: the job stopped mid-run, then sent again; it resumes the same run
        _wait_step(root, job, 50)
        subprocess.run([RAY, "job", "stop", "--address", nodes.dashboard, job.id], env=nodes.env,
                       capture_output=True, timeout=120)
        job.proc.wait(timeout=120)
        assert "succeeded" not in job.text.lower()
        timings["driver stopped"] = time.perf_counter() - t0
        again = Job(nodes, root, "faults-2")
        out = again.result()
        timings["faulted run done"] = time.perf_counter() - t0
        assert "[stargan] resuming from the checkpoint at step " in again.text
        # the uninterrupted run: same training, another storage prefix and output folder; beside it
        # (4.) a run of more workers than the cluster holds: not elastic, it fails in one line after
        # its timeout (its project folder holds params.yaml only: the shards are read from S3)
        write_params(root, _project(root, "runs-ref", "models/ref"))
        ref_job = Job(nodes, root, "reference")
        big_root = tmp_path / "big"
        write_params(big_root, _project(big_root, "runs-big", "models/big", num_workers=3, resources_timeout_s=3))
        big = Job(nodes, big_root, "too-big")
        assert big.proc.wait(timeout=300) != 0
        time.sleep(0.5)
        timings["too-big refused"] = time.perf_counter() - t0
        ref = ref_job.result()
        timings["reference run done"] = time.perf_counter() - t0
    finally:
        nodes.stop()
    print(f"timings (s since start): { {k: round(v, 1) for k, v in timings.items()} }; killed {killed} processes")

    # the faulted run finished, from checkpoints, with the uninterrupted run's weights bit for bit
    faulted, clean = load_state(out["checkpoint"]), load_state(ref["checkpoint"])
    assert faulted.step == clean.step == N_ITERS
    for net, tensors in clean.nets.items():
        for k, v in tensors.items():
            assert torch.equal(faulted.nets[net][k], v), f"{net}.{k} differs from the uninterrupted run"
    assert set(faulted.rng) == set(clean.rng) and any(k.startswith("rank1/") for k in faulted.rng)
    # one MLflow run per training run, every logged step once, the checkpoint artifact on S3
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    exp = client.get_experiment_by_name("stargan")
    runs = client.search_runs([exp.experiment_id], f"tags.`stargan.run_name` = '{out['run_name']}'")
    assert [r.info.run_id for r in runs] == [out["mlflow_run_id"]] and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(out["mlflow_run_id"], "D/loss")]
    assert steps == list(range(10, N_ITERS + 1, 10)), "no step lost or logged twice across two restarts"
    assert runs[0].info.artifact_uri.startswith(f"s3://{BUCKET}/proj/mlartifacts/")
    assert [a.path for a in client.list_artifacts(out["mlflow_run_id"], "checkpoint")] == ["checkpoint/checkpoint.pt"]
    # every object inside its prefix: shards, the two runs' checkpoints, MLflow's artifacts. The one
    # kind of key above them: empty folder markers of their parents ('proj/'), which pyarrow's
    # create_dir writes when Ray Train makes its run folder; nothing of the refused run
    keys = s3.all_keys()
    assert set(keys) == {BUCKET}
    allowed = ("shards/", "proj/shards/", "proj/runs-faults/", "proj/runs-ref/", "proj/mlartifacts/")
    outside = [k for k in keys[BUCKET] if not k.startswith(allowed)]
    assert all(k.endswith("/") and any(a.startswith(k) for a in allowed) for k in outside), outside
    assert all(s3.client().head_object(Bucket=BUCKET, Key=k)["ContentLength"] == 0 for k in outside), outside
    assert any(k.startswith(f"proj/runs-faults/{out['run_name']}/checkpoint_") for k in keys[BUCKET])
    assert any(k.endswith("/artifacts/checkpoint/checkpoint.pt") for k in keys[BUCKET])
    assert any(k.startswith("proj/shards/celeba/") and k.endswith(".parquet") for k in keys[BUCKET])
    assert not (root / "ray_results" / out["run_name"] / "mlflow_run.json").exists(), "the run record is on S3"
    # fewer resources than workers: the one-line reason
    line = big.text.strip().splitlines()
    assert any(ln.startswith("stargan train: error: train.ray.num_workers=3 needs 3 x {'CPU': 1.0}, the cluster "
                             "has room for 2 (2 live node(s) with 2 CPU); waited 3 s") for ln in line), big.text[-3000:]
    # the secret key: in no job output, MLflow param or tag, Ray log or project file
    run = client.get_run(out["mlflow_run_id"])
    assert SECRET_KEY not in json.dumps([run.data.params, run.data.tags])
    assert SECRET_KEY not in job.text + again.text + ref_job.text + big.text
    leaks = [p for d in [*nodes.temp_dirs, root] for p in d.rglob("*")
             if p.is_file() and not p.is_symlink() and p.stat().st_size < 50 << 20 and SECRET_KEY.encode() in p.read_bytes()]
    assert leaks == [], leaks

