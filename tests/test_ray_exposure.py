"""A local Ray instance, started the way the project starts it, listens on loopback only.

stargan/training/ray_cluster.py starts it; docs/security.md has the table of what binds where.
The listening sockets come from /proc, through psutil (no `ss` needed on a fresh machine); when
`ss` is installed, `ss -ltnp` is read too and whatever it sees is checked the same way.
Ray's processes are this test's descendants (driver, GCS, raylet, dashboard, agents, workers)
plus anything whose command line names this session; another Ray on the machine is ignored.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from stargan.training import ray_cluster


def ray_pids(session_dir: str) -> dict[int, str]:
    """pid -> process name for this process, its descendants and the session's processes."""
    me = psutil.Process()
    procs = {me.pid: me, **{p.pid: p for p in me.children(recursive=True)}}
    session = Path(session_dir).name
    for p in psutil.process_iter():
        try:
            if session in " ".join(p.cmdline()):
                procs[p.pid] = p
        except psutil.Error:
            pass
    out = {}
    for pid, p in procs.items():
        try:  # "gcs_server", "raylet", "python dashboard.py", "ray::DashboardAgent", "ray::IDLE", ...
            words = [os.path.basename(a.strip()) for a in p.cmdline()[:3] if a.strip() and not a.startswith("-")]
            out[pid] = " ".join(words)[:80] or p.name()
        except psutil.Error:
            pass
    return out


def listening(pids: dict[int, str]) -> set[tuple[str, int, int, str]]:
    """(ip, port, pid, process) of every TCP socket those processes listen on."""
    found = set()
    for pid, name in pids.items():
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port, pid, name) for c in conns if c.status == psutil.CONN_LISTEN}
    if shutil.which("ss"):
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            cols = line.split()
            ip, _, port = cols[3].rpartition(":")
            ip = "::" if ip == "*" else re.sub(r"[\[\]]", "", ip)
            for pid in map(int, re.findall(r"pid=(\d+)", line)):
                if pid in pids:
                    found.add((ip, int(port), pid, pids[pid]))
    return found


def is_loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    return a.is_loopback or bool(getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback)


def exposed(sockets, allowed=()) -> list[tuple[str, int, int, str]]:
    """Sockets reachable from another machine: bound to a wildcard or to a routable address."""
    return sorted(s for s in sockets if not is_loopback(s[0]) and (s[1], s[2]) not in allowed)


def wait_for_agents(session_dir: str, timeout: float = 30.0) -> set:
    """The sockets, once the raylet's two agents are up (they start after ray.init returns)."""
    deadline = time.time() + timeout
    while True:
        socks = listening(ray_pids(session_dir))
        names = " ".join(s[3] for s in socks)
        if ("DashboardAgent" in names and "RuntimeEnvAgent" in names) or time.time() > deadline:
            return socks
        time.sleep(0.5)


@pytest.fixture
def no_ray_address(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    yield
    ray.shutdown()


# ---- fast: what init_ray passes to ray.init, without starting Ray ----

def test_local_start_sets_single_machine_env_only_during_init(monkeypatch):
    import ray
    from ray._private import ray_constants

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setenv("RAY_enable_metrics_collection", "1")  # the user's choice wins
    seen = {}

    def fake_init(**kw):
        seen.update(kw, env={k: os.environ.get(k) for k in ray_cluster.LOCAL_ENV},
                    cluster=ray_constants.ENABLE_RAY_CLUSTER)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    before = ray_constants.ENABLE_RAY_CLUSTER
    assert ray_cluster.init_ray(None, num_cpus=3, include_dashboard=True) is True
    assert seen["_node_ip_address"] == seen["dashboard_host"] == "127.0.0.1"
    assert seen["address"] == "local", "never join a cluster some `ray start` left on the machine"
    assert seen["num_cpus"] == 3 and seen["include_dashboard"] is True
    assert seen["cluster"] is False, "ray.init would turn 127.0.0.1 into the routable IP"
    assert seen["env"]["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert seen["env"]["RAY_enable_metrics_collection"] == "1"
    assert ray_constants.ENABLE_RAY_CLUSTER == before
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert os.environ["RAY_enable_metrics_collection"] == "1"


def test_an_address_is_joined_unchanged(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw, os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))))
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_cluster.init_ray(None, num_cpus=2) is True
    assert ray_cluster.init_ray("ray://head:10001", num_cpus=2) is True
    assert calls == [({"address": "10.0.0.5:6379", "log_to_driver": True}, None),
                     ({"address": "ray://head:10001", "log_to_driver": True}, None)]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert ray_cluster.init_ray(None, num_cpus=2) is False and len(calls) == 2


# ---- a real local Ray ----

@pytest.mark.slow
@pytest.mark.parametrize("caller", ["ray_train", "tuning"])
def test_local_ray_listens_on_loopback_only(no_ray_address, caller):
    """Started exactly as the training driver / the sweep start it; a task runs so that a
    worker's gRPC server is up too. No exceptions: every Ray socket is on 127.0.0.1."""
    import ray

    from stargan.config import config_from_dict

    cfg = config_from_dict({"train": {"ray": {"num_workers": 1}}})
    if caller == "ray_train":
        from stargan.training.ray_train import _init_ray
    else:
        from stargan.tuning import _init_ray
    assert _init_ray(cfg) is True
    node = ray._private.worker._global_node
    assert node.node_ip_address == "127.0.0.1"
    assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()
    socks = wait_for_agents(node.get_session_dir_path())
    names = " ".join(s[3] for s in socks)
    for proc in ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent"):
        assert proc in names, f"no listening socket seen for {proc}: {sorted(socks)}"
    if caller == "ray_train":  # the dashboard (job API) is on, and among the sockets checked
        host, _, port = node.address_info["webui_url"].rpartition(":")
        assert host == "127.0.0.1" and any(s[1] == int(port) for s in socks), node.address_info["webui_url"]
    assert not exposed(socks), f"Ray sockets beyond loopback: {exposed(socks)}"


@pytest.mark.slow
def test_ray_train_workers_listen_on_loopback_except_torch_tcpstore(no_ray_address, tmp_path):
    """The real Train path (init_ray + TorchTrainer, two workers with a gloo process group), looked
    at while the workers are alive. The one exception, by name: torch.distributed's TCPStore in the
    rank-0 worker, on MASTER_PORT. torch binds it to every interface and has no setting for that
    (docs/security.md)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    def loop(config):
        import torch.distributed as dist

        d = Path(config["dir"])
        rank = ray.train.get_context().get_world_rank()
        (d / f"up{rank}").write_text(f"{int(dist.is_initialized())} {os.environ.get('MASTER_PORT', '')}")
        t = time.time()
        while not (d / "done").exists() and time.time() - t < 120:
            time.sleep(0.2)

    assert ray_cluster.init_ray(None, num_cpus=3) is True
    trainer = TorchTrainer(loop, train_loop_config={"dir": str(tmp_path)},
                           scaling_config=ray.train.ScalingConfig(num_workers=2),
                           run_config=ray.train.RunConfig(name="exposure", storage_path=str(tmp_path / "store")))
    errors = []
    th = threading.Thread(target=lambda: _fit(trainer, errors), daemon=True)
    th.start()
    try:
        deadline = time.time() + 180
        while not all((tmp_path / f"up{r}").exists() for r in (0, 1)):
            assert th.is_alive() and time.time() < deadline, f"workers never came up: {errors}"
            time.sleep(0.3)
        pg, master_port = (tmp_path / "up0").read_text().split()
        assert pg == "1", "the gloo process group is up"
        socks = wait_for_agents(ray._private.worker._global_node.get_session_dir_path())
        assert sum("RayTrainWorker" in s[3] for s in socks) >= 2, sorted(socks)
        # (port, pid) of torch's TCPStore: rank 0's MASTER_PORT, in a RayTrainWorker process
        tcpstore = {(s[1], s[2]) for s in socks if s[1] == int(master_port) and "RayTrainWorker" in s[3]}
        assert not exposed(socks, allowed=tcpstore), f"Ray sockets beyond loopback: {exposed(socks, tcpstore)}"
    finally:
        (tmp_path / "done").write_text("")
        th.join(timeout=120)
    assert not errors, errors


def _fit(trainer, errors):
    try:
        trainer.fit()
    except Exception as e:  # reported by the test thread
        errors.append(repr(e))


@pytest.mark.slow
def test_a_local_start_does_not_join_a_ray_start_cluster_on_the_machine(tmp_path):
    """With a cluster from `ray start` running (or its address left in /tmp/ray), a plain ray.init
    joined it and then failed on num_cpus with a traceback: `dvc repro` broke whenever the user had
    started Ray for something else. The local start now makes its own instance."""
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled",
                                                                          "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port=6391", "--dashboard-host=127.0.0.1",
                             "--dashboard-port=8276", "--dashboard-agent-listen-port=52376", "--num-cpus=1"],
                            env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while subprocess.run([ray_bin, "status", "--address", "127.0.0.1:6391"], env=env, capture_output=True,
                             timeout=60).returncode != 0:
            assert time.time() < deadline and head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(2)
        code = ("import ray; from stargan.training.ray_cluster import init_ray; init_ray(None, num_cpus=2); "
                "print(ray._private.worker._global_node.gcs_address); ray.shutdown()")
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    finally:
        head.terminate()
        head.wait(timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not run.stdout.strip().splitlines()[-1].endswith(":6391"), "a new local instance, not the user's cluster"
