"""Start the local Ray instance, or join a cluster, for the training driver and the sweep.

Why: on Linux a local ``ray.init`` takes the node IP from the default route, and its GCS, raylet,
worker, agent and Prometheus servers listen on that IP or on every interface. On one machine
none of them has to be reachable from elsewhere. ``_node_ip_address="127.0.0.1"`` alone does
not help, because ``ray.init`` rewrites loopback to the routable IP unless Ray is in
single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on macOS and Windows).
In that mode every Ray socket binds 127.0.0.1. The one exception is torch's TCPStore in a Ray
Train run, which has no bind setting. We also drop what one machine does not need: the metrics
exporter and usage stats. Sockets are checked with ``ss``/``/proc`` by
tests/test_ray_exposure.py; the table is in docs/security.md. Values the user exported win.
A given address (or ``$RAY_ADDRESS``) is joined unchanged.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

LOOPBACK = "127.0.0.1"

#: read when Ray starts, by this process and by the processes it spawns; setdefault only
LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single-machine mode: the node IP stays 127.0.0.1
    "RAY_enable_metrics_collection": "0",      # no Prometheus exporter on the metrics agent
    "RAY_USAGE_STATS_ENABLED": "0",            # no usage report sent to Ray's servers
} | ({"GLOO_SOCKET_IFNAME": "lo"} if sys.platform.startswith("linux") else {})  # else: the hostname's IP


def init_ray(address: str | None, *, num_cpus: int, include_dashboard: bool | None = None) -> bool:
    """Join ``address`` (else ``$RAY_ADDRESS``), or start a local Ray bound to 127.0.0.1.

    Returns True when this call connected (so the caller calls ``ray.shutdown()``), False when
    Ray was already initialised in this process. ``include_dashboard=None`` is Ray's default
    (on when ``ray[default]`` is installed); the dashboard serves on 127.0.0.1 either way.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    # address="local": a new instance even when a `ray start` cluster runs on this machine. Without
    # it ray.init joins that cluster (found through /tmp/ray) and fails on num_cpus with a traceback.
    with _single_machine_env():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, dashboard_host=LOOPBACK,
                 _node_ip_address=LOOPBACK, log_to_driver=True)
    return True


@contextmanager
def _single_machine_env() -> Iterator[None]:
    """Set LOCAL_ENV for the processes ``ray.init`` spawns (they inherit it, and the raylet
    passes it on to the workers it starts later), then restore it. Ray's constants module
    reads the variable once, on import, so this process's copy is updated for the duration too."""
    from ray._common.utils import env_bool
    from ray._private import ray_constants

    saved = {k: os.environ.get(k) for k in LOCAL_ENV}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    ray_constants.ENABLE_RAY_CLUSTER = env_bool(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, True)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
