"""Ray Tune search over the loss weights: λ_cls, λ_rec (v1) or λ_sty, λ_ds (v2).

Which λs are searched is said in params: a loss weight set to ``tuned`` (``train.v1.lambda_rec:
tuned``) is searched within its ``tune.<name>`` range, and a number is used as written, in every
trial and in training. The stage writes the best values to ``tuned.yaml`` beside params.yaml,
a DVC params file of the train stage, so ``dvc exp show`` / ``dvc params diff`` show the λs that
trained, and :func:`stargan.config.resolve_tuned` puts them in place of ``tuned``. Nothing
overrides a number the user set.

Optuna proposes the λs (``OptunaSearch``, seeded by ``train.seed``), ASHA stops poor trials
early. A trial trains with the project's worker loop (:func:`stargan.training.worker.run_worker`)
for ``tune.iters_per_trial`` steps and, at each of its ``tune.reports_per_trial`` checkpoints,
scores the model on the validation split with the evaluation code's quick objective
(``tune.objective``, ``tune.mode``); those reports are ASHA's rungs.

Two ways to run a trial, same loop, same objective:

* ``tune.use_ray_train: false`` (default): a function trainable runs the loop in the trial's own
  process (one CPU). Measured on the 2-core box: Ray Train's controller and worker-group
  start-up is ~15 s per run (TOOLCHAIN §3), more than a whole default trial, so the default
  ``dvc repro`` uses this.
* ``tune.use_ray_train: true``: each trial drives a Ray Train ``TorchTrainer`` (``train.ray``
  workers, GPUs, DDP-style gradient averaging) with ``TuneReportCallback`` — Tune over Train,
  for clusters. The dashboard stays on (a placement group leaks without it, TOOLCHAIN §3).

MLflow: the sweep is a parent run; every trial is a nested child run with
its λs as params and its reported metrics per training step. Only the driver writes to MLflow
(after each trial's results come back), so the SQLite store has one writer and a multi-node
cluster needs no access to it from the workers.
"""
from __future__ import annotations

import dataclasses
import math
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from stargan.config import SWEEPABLE, TUNED_FILE, Config, config_from_dict, tuned_keys, with_loss_weights
from stargan.errors import StarganError
from stargan.evaluation import quick_objective
from stargan.files import write_json, write_text
from stargan.inference import model_from_state
from stargan.tracking import Tracker
from stargan.training.ray_cluster import init_ray
from stargan.training.worker import WorkerContext, run_worker

#: searchable λ -> where it lives in params, per model
SEARCH = {model: {k: f"train.{model}.{k}" for k in names} for model, names in SWEEPABLE.items()}
BEST_JSON = Path("models") / "tune" / "best.json"
WORST = 1e9


class TuneError(StarganError, RuntimeError):
    """The sweep could not run or produced no usable trial; the message says why."""


# --------------------------------------------------------------------------------- trials

def searched(cfg: Config) -> list[str]:
    """Names of the λs this sweep searches: the trained model's loss weights set to ``tuned``."""
    return [key.rsplit(".", 1)[1] for key in tuned_keys(cfg)]


def search_space(cfg: Config) -> dict[str, Any]:
    from ray import tune

    space = {}
    for name in searched(cfg):
        lo, hi = getattr(cfg.tune, name)
        space[name] = (tune.loguniform(lo, hi) if 0 < lo < hi else tune.uniform(lo, hi)) if lo < hi else lo
    return space


def trial_config(params: dict, lambdas: dict[str, float], tune_cfg: dict) -> Config:
    """The training config of one trial: the λs, ``iters_per_trial`` steps, a checkpoint per report."""
    cfg = with_loss_weights(config_from_dict(params), lambdas)
    iters = int(tune_cfg["iters_per_trial"])
    every = max(1, math.ceil(iters / int(tune_cfg["reports_per_trial"])))
    # init_from=None: trials compare loss weights from scratch (the tune stage does not read train.init_from)
    train = dataclasses.replace(cfg.train, num_iters=iters, checkpoint_every=every, sample_every=iters + 1,
                                log_every=min(every, cfg.train.log_every), init_from=None)
    return dataclasses.replace(cfg, train=train)


class _TrialHooks:
    """Worker-loop hooks: no resume; at each checkpoint score the model and report it."""
    def __init__(self, cfg: Config, repo_root: Path, report: Callable[[dict], None], rank: int = 0):
        self.cfg, self.root, self._report, self.rank = cfg, repo_root, report, rank

    def resume(self):
        return None

    def report(self, metrics: dict[str, float], state) -> None:
        t = self.cfg.tune
        out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if state is None or metrics.get("nonfinite"):
            out["objective"] = WORST if t.mode == "min" else -WORST
        elif self.rank == 0:
            scores = {k: float(v) for k, v in
                      quick_objective(model_from_state(state), self.cfg, self.root, t.val_images).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if t.objective not in scores:
                raise TuneError(f"tune.objective {t.objective!r} is not among the objective's keys: "
                                f"{', '.join(sorted(scores))}")
            out.update({f"val/{k}": v for k, v in scores.items()})
            value = scores[t.objective]
            out["objective"] = value if math.isfinite(value) else (WORST if t.mode == "min" else -WORST)
        self._report(out)


def _function_trial(config: dict) -> None:
    """Function trainable: the worker loop in this process."""
    from ray import tune


    torch.set_num_threads(1)
    cfg = trial_config(config["params"], config["lambdas"], config["tune"])
    root = Path(config["repo_root"])
    ctx = WorkerContext(rank=0, world_size=1, device=torch.device("cpu"),
                        shard_root=(root / cfg.data.root / "shards").resolve(), progress=False)
    run_worker(cfg, ctx, _TrialHooks(cfg, root, tune.report))


def _train_worker(config: dict) -> None:
    """Ray Train ``train_loop_per_worker`` of a Tune-over-Train trial."""
    import ray.train
    import ray.train.torch


    tctx = ray.train.get_context()
    rank = tctx.get_world_rank()
    cfg = trial_config(config["params"], config["lambdas"], config["tune"])
    root = Path(config["repo_root"])
    ctx = WorkerContext(rank=rank, world_size=tctx.get_world_size(), device=ray.train.torch.get_device(),
                        shard_root=(root / cfg.data.root / "shards").resolve(), progress=False)
    run_worker(cfg, ctx, _TrialHooks(cfg, root, ray.train.report, rank))


def _train_driver(config: dict) -> None:
    """Tune trainable that runs one Ray Train ``TorchTrainer`` (Tune over Train, TOOLCHAIN §3)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = config["ray"]
    resources = {"CPU": r["cpus_per_worker"]} | ({"GPU": 1} if r["use_gpu"] else {})
    TorchTrainer(_train_worker, train_loop_config=config,
                 scaling_config=ray.train.ScalingConfig(num_workers=r["num_workers"], use_gpu=r["use_gpu"],
                                                        resources_per_worker=resources),
                 run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}",
                                                storage_path=config["storage"],
                                                callbacks=[TuneReportCallback()])).fit()


def _trainable(config: dict, base: dict) -> None:
    """Tune calls this with the sampled λs as ``config`` (``base``: the rest, via the object store)."""
    inner = dict(base, lambdas={k: config[k] for k in base["searched"]})
    (_train_driver if base["tune"]["use_ray_train"] else _function_trial)(inner)


# ---------------------------------------------------------------------------------- sweep

def _history_callback(total: int, t0: float):
    """A Tune callback (runs in the driver) keeping every reported result per trial (the trial
    table and the MLflow child runs are built from it) and printing one line per report, in place
    of Tune's own status tables (``verbose=0``: hundreds of lines for a 4-trial sweep)."""
    from ray import tune

    class History(tune.Callback):
        def __init__(self):
            self.rows: dict[str, list[dict]] = {}
            self.done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            row = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.rows.setdefault(trial.trial_id, []).append(row)
            lam = ", ".join(f"{k}={v:.4g}" for k, v in trial.config.items() if isinstance(v, float))
            print(f"[tune] trial {trial.trial_id} ({lam}): objective {row.get('objective', float('nan')):.4g} at step "
                  f"{int(row.get('step', 0))} ({time.perf_counter() - t0:.0f} s)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            print(f"[tune] {self.done}/{total} trials done", flush=True)

    return History()


def _init_ray(cfg: Config) -> bool:
    # Logical over-subscription (TOOLCHAIN §3); the dashboard is needed when Tune drives Train.
    # A local instance listens on 127.0.0.1 only (ray_cluster.py, docs/security.md).
    return init_ray(cfg.train.ray.address, num_cpus=cfg.tune.cpus, include_dashboard=cfg.tune.use_ray_train)


def run_sweep(cfg: Config, repo_root: Path, *, name: str | None = None) -> dict:
    """Run the sweep over :func:`searched` λs; returns the content of ``best.json`` (best λs, the
    ``tuned`` values for tuned.yaml, the trial table). No λ set to ``tuned``: no sweep."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    repo_root = repo_root.resolve()
    t, model, names = cfg.tune, cfg.train.model, searched(cfg)
    if not names:
        return {"model": model, "searched": [], "best": {}, "tuned": {}, "trials": []}
    for ds in cfg.train.datasets:
        if not (repo_root / cfg.data.root / "shards" / ds / "manifest.json").exists():
            raise TuneError(f"{cfg.data.root}/shards/{ds}/manifest.json: missing; build the shards first "
                            "(`dvc repro shard`)")
    name = name or f"tune-{model}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    storage = Path(cfg.train.ray.storage_path or repo_root / "ray_results").resolve()
    r = cfg.train.ray
    base = {"params": cfg.to_dict(), "repo_root": str(repo_root), "storage": str(storage), "searched": names,
            "tune": {k: getattr(t, k) for k in ("iters_per_trial", "reports_per_trial", "use_ray_train")},
            "ray": {"num_workers": r.num_workers, "use_gpu": r.use_gpu, "cpus_per_worker": r.cpus_per_worker}}
    space = search_space(cfg)
    trainable = tune.with_resources(tune.with_parameters(_trainable, base=base),
                                    {"cpu": 1} if not t.use_ray_train else {"cpu": 0.5})
    t0 = time.perf_counter()
    history = _history_callback(t.num_samples, t0)
    started = _init_ray(cfg)
    try:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                metric="objective", mode=t.mode, num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent,
                search_alg=OptunaSearch(seed=cfg.train.seed),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=t.reports_per_trial,
                                        grace_period=min(t.grace_period, t.reports_per_trial),
                                        reduction_factor=t.reduction_factor),
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                      callbacks=[history, CSVLoggerCallback(), JsonLoggerCallback()]))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    trials = _trial_table(grid, history.rows, names, t.reports_per_trial, t.mode)
    ok = [tr for tr in trials if tr["objective"] is not None and tr["error"] is None and abs(tr["objective"]) < WORST]
    if not ok:
        errors = "; ".join(f"{tr['trial_id']}: {tr['error']}" for tr in trials if tr["error"])[:1500]
        raise TuneError(f"no trial of sweep {name} produced a usable objective" + (f" ({errors})" if errors else ""))
    # Trials ASHA stopped early were scored after fewer steps; rank the ones that ran to the end.
    finished = [tr for tr in ok if not tr["stopped_early"]] or ok
    best = (min if t.mode == "min" else max)(finished, key=lambda tr: tr["objective"])
    result = {"model": model, "searched": names, "name": name, "objective": t.objective, "mode": t.mode,
              "best": best["lambdas"], "best_value": best["objective"], "best_trial": best["trial_id"],
              "tuned": {SEARCH[model][k]: v for k, v in best["lambdas"].items()},
              "ranges": {k: getattr(t, k) for k in names}, "trials": trials,
              "seconds": round(seconds, 1), "storage": str(storage / name),
              "trainable": "ray_train" if t.use_ray_train else "function"}
    result["parent_run_id"] = _log_sweep(Tracker.for_config(cfg, repo_root), cfg, result, history.rows)
    return result


def _trial_table(grid, history: dict[str, list[dict]], keys: list[str], max_t: int, mode: str) -> list[dict]:
    rows = []
    for res in grid:
        cfg = res.config or {}
        m = res.metrics or {}
        obj = m.get("objective")
        trial_id = m.get("trial_id") or Path(res.path).name
        hist = [float(r["objective"]) for r in history.get(trial_id, []) if "objective" in r]
        rows.append({"trial_id": trial_id,
                     "lambdas": {k: float(cfg[k]) for k in keys if k in cfg},
                     "objective": None if obj is None else float(obj),
                     "best_objective": (min(hist) if mode == "min" else max(hist)) if hist else None,
                     "reports": int(m.get("training_iteration", 0) or 0),
                     "stopped_early": int(m.get("training_iteration", 0) or 0) < max_t,
                     "step": int(m.get("step", 0) or 0),
                     "error": None if res.error is None else str(res.error).splitlines()[0][:300]})
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def _log_sweep(tracker: Tracker, cfg: Config, result: dict, history: dict[str, list[dict]]) -> str:
    """Parent run for the sweep, one nested child run per trial (driver-side, one writer)."""
    parent = tracker.start_run(result["name"], {"tune": cfg.to_dict()["tune"], "model": cfg.train.model,
                                                "searched": result["searched"], "best": result["best"]},
                               tags={"stargan.kind": "sweep", "stargan.model": cfg.train.model})
    for tr in result["trials"]:
        child = tracker.start_run(f"{result['name']}/{tr['trial_id']}",
                                  {**tr["lambdas"], "iters_per_trial": cfg.tune.iters_per_trial},
                                  tags={"stargan.kind": "trial", "stargan.trial_id": tr["trial_id"],
                                        "stargan.stopped_early": str(tr["stopped_early"]).lower()}, parent=parent)
        tracker.log_metrics(child, [(k, v, int(row.get("step", row.get("training_iteration", 0))))
                                    for row in history.get(tr["trial_id"], []) for k, v in row.items()
                                    if (k == "objective" or k.startswith(("val/", "D/", "G/"))) and math.isfinite(v)])
        tracker.finish(child, "FAILED" if tr["error"] else "FINISHED")
    tracker.log_metrics(parent, [("best/objective", result["best_value"], 0)])
    tracker.finish(parent)
    return parent


# ------------------------------------------------------------------------------ consumers

def tuned_yaml(best: dict) -> str:
    """``tuned.yaml``: the best value of every searched λ under its params key (a DVC params file)."""
    nested: dict = {}
    for key, value in best["tuned"].items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = float(value)
    head = (f"# Written by the tune stage (sweep {best['name']}, {best['objective']} {best['mode']} "
            f"{best['best_value']:.6g}). The train stage uses these values for the loss weights set to\n"
            "# 'tuned' in params.yaml; a number set there is used as written. Do not edit: re-run the sweep.\n"
            if best["tuned"] else
            "# Written by the tune stage: no loss weight is set to 'tuned' in params.yaml, so no sweep ran.\n")
    return head + yaml.safe_dump(nested, sort_keys=True, default_flow_style=False)


def write_outputs(best: dict, repo_root: Path) -> None:
    """best.json (trial table), tuned.yaml (the values train uses) and reports/tune.json."""
    write_json(repo_root / BEST_JSON, best)
    write_text(repo_root / TUNED_FILE, tuned_yaml(best))
    write_json(repo_root / "reports" / "tune.json", metrics_summary(best))


def metrics_summary(best: dict) -> dict:
    """``reports/tune.json``: the sweep in a few flat numbers."""
    if not best["trials"]:
        return {"trials": 0}
    out = {"best_objective": best["best_value"], "trials": len(best["trials"]),
           "stopped_early": sum(tr["stopped_early"] for tr in best["trials"]), "seconds": best["seconds"]}
    out.update({f"best_{k}": v for k, v in best["best"].items()})
    return out
