"""Room on the Ray cluster for a run's workers: wait for it with a message, then fail. Not elastic.

Why not elastic (Ray Train can resize between ``(min, max)`` workers): the global batch is
``train.batch_size x train.ray.num_workers``, each rank's stream of row groups depends on the
world size, and a checkpoint resumes exactly only in the world that wrote it. A run that shrank
on a lost node would silently train with another batch and another data order. So the worker
count is fixed, and a cluster without room for it is waited for (an autoscaler or an operator
adds nodes) up to ``train.ray.resources_timeout_s``:

- before the run starts, :func:`wait_for_room` prints what is missing once, polls the live nodes,
  and fails in one line when the time is up (at once on a local Ray, which no node can join);
- after a node is lost mid-run, Ray Train restarts the whole worker group from the last checkpoint
  once its placement group fits again; each try waits Ray's worker-group start timeout
  (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 60 s by default) and :func:`controller_retries`
  sizes the number of tries to the same timeout.
"""
from __future__ import annotations

import math
import time
from typing import Callable

from stargan.training.errors import TrainingError

RAY_GROUP_START_TIMEOUT_S = 60.0       # Ray Train's default per try (ray.train.v2 constants)


def per_worker_resources(cpus_per_worker: float, use_gpu: bool) -> dict[str, float]:
    """What one training worker asks Ray for."""
    return {"CPU": cpus_per_worker} | ({"GPU": 1.0} if use_gpu else {})


def workers_that_fit(nodes: list[dict], per_worker: dict[str, float]) -> int:
    """How many workers the *live* nodes could hold (each worker on one node), from ``ray.nodes()``."""
    asked = {k: v for k, v in per_worker.items() if v > 0}
    total = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        total += min((int(have.get(k, 0.0) // v + 1e-9) for k, v in asked.items()), default=1 << 20)
    return total


def _totals(nodes: list[dict], keys: list[str]) -> str:
    live = [n for n in nodes if n.get("Alive")]
    sums = {k: sum(n.get("Resources", {}).get(k, 0.0) for n in live) for k in keys}
    return f"{len(live)} live node(s) with " + ", ".join(f"{v:g} {k}" for k, v in sums.items())


def wait_for_room(num_workers: int, per_worker: dict[str, float], timeout_s: float, *, can_grow: bool,
                  nodes: Callable[[], list[dict]], echo: Callable[[str], None] = print, poll_s: float = 1.0) -> None:
    """Return once the cluster has room for ``num_workers`` workers; raise :class:`TrainingError`
    after ``timeout_s`` (at once when ``can_grow`` is False: a local Ray gains no nodes)."""
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        listed = nodes()
        fit = workers_that_fit(listed, per_worker)
        if fit >= num_workers:
            if waited:
                echo(f"[stargan] the cluster has room for the {num_workers} worker(s) now; starting")
            return
        need = (f"train.ray.num_workers={num_workers} needs {num_workers} x {per_worker}, the cluster has room for "
                f"{fit} ({_totals(listed, list(per_worker))})")
        if not can_grow:
            raise TrainingError(f"{need} and is a local Ray that no node can join. Lower train.ray.num_workers "
                                "or train.ray.cpus_per_worker (or set train.ray.use_gpu false), or run on a cluster "
                                "(train.ray.address)")
        if time.monotonic() >= deadline:
            raise TrainingError(f"{need}; waited {timeout_s:g} s (train.ray.resources_timeout_s) for nodes to join. "
                                "Add nodes (`ray start --address <head>:<port>`), lower train.ray.num_workers, or "
                                "raise train.ray.resources_timeout_s; training does not shrink to fit (docs/scaling.md)")
        if not waited:
            echo(f"[stargan] waiting up to {timeout_s:g} s for room: {need}")
            waited = True
        time.sleep(poll_s)


def controller_retries(timeout_s: float) -> int:
    """Ray Train worker-group start tries after a lost node, each waiting Ray's own timeout, so that
    together they wait about ``timeout_s``."""
    return max(1, math.ceil(timeout_s / RAY_GROUP_START_TIMEOUT_S))
