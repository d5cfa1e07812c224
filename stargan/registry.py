"""MLflow: the model as a pyfunc, registered, with the champion alias moved only for a better model.

The pyfunc wraps our own inference code (``stargan`` is shipped inside the model via
``code_paths``; nothing is installed or inferred at log or serve time: ``pip_requirements`` is
explicit). Its weights are a slim copy of the training checkpoint (inference nets only, EMA for
v2), loaded with :func:`stargan.inference.model_from_state`, so every consumer — the pyfunc,
``mlflow models serve``, ``stargan translate models:/...`` — runs the same code.

Input (a dict of arrays; over REST ``{"inputs": {...}}``), S = ``train.image_size``:

* ``image``  float32 [N, 3, S, S], RGB in [-1, 1], aligned face crops (``stargan translate``
  aligns photos; the pyfunc does not detect faces);
* ``target`` string [N]: v1 a label name or a comma-separated combination per row
  (``"Blond_Hair,Male"``); v2 one domain name per row;
* v2 only: ``seed`` int64 [N] and ``reference`` float32 [N, 3, S, S]: row i is latent-guided
  with z drawn from ``seed[i]`` when ``seed[i] >= 0``, else reference-guided by ``reference[i]``
  (MLflow tensor signatures cannot make an input optional, so both are always sent).

Output: float32 [N, 3, S, S] in [-1, 1] (the translated images; ``(y + 1) * 127.5`` to uint8).

Champion rule: the new version gets ``export.alias`` only if its evaluation objective
(``export.objective`` in ``reports/eval.json``, better by ``export.objective_mode``) beats the
current champion's (the ``stargan.objective`` tag of the version holding the alias), or when
there is no champion yet. Otherwise it is registered without moving the alias; the reason is
printed and stored as the version tag ``stargan.champion_decision``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from stargan.config import EVAL_REPORT, Config
from stargan.errors import StarganError
from stargan.export import export_model
from stargan.files import sha256_file
from stargan.inference import (load_model, model_from_state, translate_latent, translate_reference,
                               translate_v1)
from stargan.tracking import RUN_ID_KEY, Tracker, provenance_tags
from stargan.training.checkpoint import TrainState, check_compatible, load_state, save_state

TAG_OBJECTIVE = "stargan.objective"
TAG_OBJECTIVE_KEY = "stargan.objective_key"
TAG_DECISION = "stargan.champion_decision"
TAG_MOVED = "stargan.alias_moved"


class RegistryError(StarganError, RuntimeError):
    """The model cannot be logged or registered; the message says why."""


# ---------------------------------------------------------------------------------- pyfunc

class StarGANPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow python_function wrapper around :mod:`stargan.inference` / :mod:`stargan.translate`."""
    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # no type hints: the signature validates
        # Scoped, not torch.set_grad_enabled(False): the pyfunc is loaded inside other programs
        # (tests, notebooks, training drivers) whose autograd must stay on.
        with torch.no_grad():
            return predict_arrays(self.model, model_input)


def _column(model_input: Any, name: str) -> np.ndarray:
    try:
        value = model_input[name]
    except (KeyError, IndexError):
        raise ValueError(f"input {name!r} is missing") from None
    if hasattr(value, "to_numpy"):      # a pandas column
        value = value.to_numpy()
    return np.asarray(value)


def _images(arr: np.ndarray, size: int, name: str) -> torch.Tensor:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != (3, size, size):
        raise ValueError(f"{name}: expected float32 [N, 3, {size}, {size}] in [-1, 1], got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def predict_arrays(model, model_input: Any) -> np.ndarray:
    """The pyfunc's contract (module docstring) on a loaded :class:`~stargan.inference.Model`."""
    x = _images(_column(model_input, "image"), model.image_size, "image")
    targets = [str(t) for t in _column(model_input, "target").reshape(-1)]
    if len(targets) != x.shape[0]:
        raise ValueError(f"target: {len(targets)} names for {x.shape[0]} images")
    if model.kind == "v1":
        return translate_v1(model, x, targets).numpy()
    seeds = _column(model_input, "seed").astype(np.int64).reshape(-1)
    if len(seeds) != x.shape[0]:
        raise ValueError(f"seed: {len(seeds)} values for {x.shape[0]} images")
    out = torch.empty_like(x)
    lat = np.flatnonzero(seeds >= 0)
    ref = np.flatnonzero(seeds < 0)
    if len(lat):
        out[lat] = translate_latent(model, x[lat], [targets[i] for i in lat], seeds[lat].tolist())
    if len(ref):
        refs = _images(_column(model_input, "reference"), model.image_size, "reference")
        out[ref] = translate_reference(model, x[ref], refs[ref], [targets[i] for i in ref])
    return out.numpy()


def example_input(model, n: int = 1) -> dict[str, np.ndarray]:
    s = model.image_size
    g = np.random.default_rng(0)
    ex: dict[str, np.ndarray] = {"image": (g.random((n, 3, s, s), dtype=np.float32) * 2 - 1).round(3)}
    if model.kind == "v1":
        first = model.layout.datasets[0].label_names[0]
        ex["target"] = np.array([first] * n)
    else:
        ex["target"] = np.array([model.target_names()[-1]] * n)
        ex["seed"] = np.arange(n, dtype=np.int64)
        ex["reference"] = ex["image"].copy()
    return ex


def signature_for(model):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    s = model.image_size
    img = (-1, 3, s, s)
    inputs = [TensorSpec(np.dtype(np.float32), img, "image"), TensorSpec(np.dtype(str), (-1,), "target")]
    if model.kind == "v2":
        inputs += [TensorSpec(np.dtype(np.int64), (-1,), "seed"), TensorSpec(np.dtype(np.float32), img, "reference")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([TensorSpec(np.dtype(np.float32), img)]))


def pip_requirements() -> list[str]:
    """Pinned to what is installed (no inference subprocess; torch's local ``+cpu`` label dropped)."""
    out = []
    for dist in ("torch", "numpy", "pyyaml", "mlflow"):
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def slim_checkpoint(state, out_dir: Path) -> Path:
    """The inference nets of a training state (no D, optimizers or RNG) in the one checkpoint format."""
    if state.model == "v1":
        keep = ("G_ema",) if "G_ema" in state.nets else ("G",)
    else:
        keep = ("G_ema", "F_ema", "E_ema")
    slim = TrainState(step=state.step, model=state.model, config=state.config,
                      nets={k: state.nets[k] for k in keep}, extra=dict(state.extra))
    return save_state(slim, out_dir / "checkpoint.pt")


@contextlib.contextmanager
def tracking(uri: str | None):
    """Point MLflow's fluent API (and registry) at ``uri`` for a block, then restore the previous
    setting. ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, which
    :func:`stargan.tracking.resolve_tracking_uri` honours, so leaving it set would redirect
    every later resolution in this process."""
    import mlflow

    if uri is None:
        yield
        return
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(env_before) if env_before else mlflow.set_tracking_uri(None)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def load_registered(uri: str, tracking_uri: str | None = None):
    """``models:/name@alias`` (or any pyfunc URI of ours) -> the inference model inside it."""
    import mlflow

    try:
        with tracking(tracking_uri):
            pyfunc = mlflow.pyfunc.load_model(uri)
    except Exception as e:  # noqa: BLE001 - MlflowException / OSError: say which model and where
        raise RegistryError(f"cannot load {uri} from {mlflow.get_tracking_uri()}: {str(e).splitlines()[0][:300]}") from None
    inner = pyfunc.unwrap_python_model()
    if not isinstance(inner, StarGANPyfunc):
        raise RegistryError(f"{uri} is not a stargan model ({type(inner).__name__})")
    return inner.model


# ------------------------------------------------------------------------------- champion

def read_objective(eval_json: Path | None, key: str, checkpoint: Path | None = None) -> float | None:
    """``key`` from reports/eval.json: a flat key (``counterfactual_l1``) or a path in nested
    sections split on ``/`` or ``.``. None when the file or the key is missing, or not a number,
    or (given ``checkpoint``) when the file evaluated another checkpoint: a version is never
    judged by another model's numbers."""
    if eval_json is None or not Path(eval_json).exists():
        return None
    data = json.loads(Path(eval_json).read_text())
    if checkpoint is not None:
        evaluated = (data.get("info") or {}).get("checkpoint_sha256") if isinstance(data, dict) else None
        if evaluated != sha256_file(checkpoint):
            print(f"[export] {eval_json} is not the evaluation of {checkpoint} (checkpoint sha256 "
                  f"{evaluated or 'not recorded'}): its numbers are not used; run the evaluate stage on it")
            return None
    candidates = [data.get(key) if isinstance(data, dict) else None]
    for sep in ("/", "."):
        node: Any = data
        for part in key.split(sep):
            node = node.get(part) if isinstance(node, dict) else None
        candidates.append(node)
    for v in candidates:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def decide(new: float | None, champion_version: str | None, champion_value: float | None,
           mode: str, key: str) -> tuple[bool, str]:
    """(move the alias?, why) for a new version with objective ``new``."""
    if champion_version is None:
        return True, "no champion yet" + ("" if new is not None else f" (no '{key}' in the evaluation metrics)")
    if new is None:
        return False, (f"no evaluation objective '{key}' for this version (reports/eval.json missing or lacks it); "
                       f"champion v{champion_version} kept")
    if champion_value is None:
        return True, f"champion v{champion_version} has no recorded objective '{key}'"
    better = new < champion_value if mode == "min" else new > champion_value
    cmp = f"{key}={new:.6g} vs champion v{champion_version} {champion_value:.6g} ({mode} is better)"
    return (True, f"beats the champion: {cmp}") if better else (False, f"does not beat the champion: {cmp}")


@dataclass
class Registered:
    name: str
    version: str
    model_uri: str
    run_id: str
    alias: str
    alias_moved: bool
    reason: str
    objective: float | None
    tracking_uri: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def register_model(checkpoint: Path, cfg: Config, repo_root: Path, *, export_dir: Path | None = None,
             eval_json: Path | None = None) -> Registered:
    """Log the checkpoint's model as a pyfunc into its training run, register it under
    ``export.registered_name`` and move ``export.alias`` if it is better (module docstring)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    import stargan

    e = cfg.export
    state = load_state(checkpoint)
    model = model_from_state(state)
    tracker = Tracker.for_config(cfg, repo_root)
    tracking_uri, client = tracker.uri, tracker.client
    run_id = state.extra.get(RUN_ID_KEY)
    if run_id and not tracker.has_run(run_id):
        print(f"[export] training run {run_id} is not in {tracking_uri}; logging into a new run")
        run_id = None
    if not run_id:
        run_id = tracker.start_run(f"export-{cfg.train.model}-step{state.step}",
                                   tags={"stargan.model": cfg.train.model, "stargan.kind": "export"})

    objective = read_objective(eval_json, e.objective, checkpoint)
    x = example_input(model)
    with tempfile.TemporaryDirectory() as tmp:
        slim = slim_checkpoint(state, Path(tmp))
        with tracking(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=StarGANPyfunc(), artifacts={"checkpoint": str(slim)},
                code_paths=[str(Path(stargan.__file__).parent)], signature=signature_for(model),
                input_example=x, pip_requirements=pip_requirements(), registered_model_name=e.registered_name)
            if export_dir is not None and Path(export_dir).exists():
                mlflow.log_artifacts(str(export_dir), "export")
            if objective is not None:
                mlflow.log_metric(f"eval/{e.objective}", objective)
    version = str(info.registered_model_version)

    try:
        champ = client.get_model_version_by_alias(e.registered_name, e.alias)
    except MlflowException:
        champ = None
    champ_value = None
    if champ is not None and champ.tags.get(TAG_OBJECTIVE) not in (None, ""):
        champ_value = float(champ.tags[TAG_OBJECTIVE])
    moved, reason = decide(objective, champ.version if champ else None, champ_value, e.objective_mode, e.objective)
    tags = {TAG_OBJECTIVE_KEY: e.objective, TAG_DECISION: reason, TAG_MOVED: str(moved).lower(),
            "stargan.step": str(state.step), "stargan.kind": model.kind} | provenance_tags(repo_root)
    if objective is not None:
        tags[TAG_OBJECTIVE] = repr(objective)
    for k, v in tags.items():
        client.set_model_version_tag(e.registered_name, version, k, v)
    if moved:
        client.set_registered_model_alias(e.registered_name, e.alias, version)
    verb = f"now @{e.alias}" if moved else f"registered WITHOUT moving @{e.alias}"
    print(f"[export] {e.registered_name} v{version} {verb}: {reason}")
    return Registered(name=e.registered_name, version=version, model_uri=info.model_uri, run_id=run_id,
                      alias=e.alias, alias_moved=moved, reason=reason, objective=objective, tracking_uri=tracking_uri)


def export_and_register(cfg: Config, repo_root: Path, checkpoint: Path, *, register: bool
                        ) -> tuple[dict, Registered | None]:
    """The export stage and ``stargan export``: export ``checkpoint`` to ``export.output_dir`` and,
    with ``register``, log and register it (:func:`register`).

    The checkpoint must be one the params describe (same model kind, sizes and labels): the
    registered version is named, described and judged by these params, so a v2 checkpoint given
    with v1 params is refused rather than registered under the wrong description.
    Returns ``(export report, Registered or None)``."""
    state = load_state(checkpoint)
    check_compatible(state, cfg.to_dict(), what=f"export {checkpoint} with these params (--params)")
    e = cfg.export
    out = Path(repo_root) / e.output_dir
    report = export_model(model_from_state(state), out, parity_atol=e.parity_atol, exporter=e.onnx_exporter,
                          latency_reps=e.latency_reps)
    if not register:
        return report, None
    return report, register_model(checkpoint, cfg, repo_root, export_dir=out, eval_json=Path(repo_root) / EVAL_REPORT)
