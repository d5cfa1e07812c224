"""MLflow: the model as a pyfunc, registered, with the champion alias moved only for a better model.

The pyfunc wraps our own inference code (``stargan`` is shipped inside the model via
``code_paths``; nothing is installed or inferred at log or serve time: ``pip_requirements`` is
explicit). Its weights are a slim copy of the training checkpoint (inference nets only, EMA for
v2), loaded with :func:`stargan.inference.model_from_state`, so every consumer — the pyfunc,
``mlflow models serve``, ``stargan translate models:/...`` — runs the same code.

Input: rows (a DataFrame; over REST ``{"dataframe_records": [{...}, ...]}``) of

* ``image``  string: a PNG or JPEG file, base64-encoded: an aligned face crop of any size (it is
  centre-cropped to a square and resized to ``train.image_size``, as ``stargan translate
  --no-align`` does; the pyfunc does not detect faces);
* ``target`` string: v1 a label name or a comma-separated combination (``"Blond_Hair,Male"``);
  v2 one domain name;
* v2 only, optional: ``seed`` (int, default 0: latent-guided with z drawn from it) or
  ``reference`` (base64 PNG/JPEG: reference-guided; used when ``seed`` is absent or negative).

Output: rows of ``image``: the translation as a base64 PNG (``train.image_size`` square).
A row that cannot be translated (an unknown target, a file that is not an image) fails the request
with the reason in the response's ``message``.

Champion rule: the new version gets ``export.alias`` only if its evaluation objective
(``export.objective`` in ``reports/eval.json``, better by ``export.objective_mode``) beats the
current champion's (the ``stargan.objective`` tag of the version holding the alias), or when
there is no champion yet. Otherwise it is registered without moving the alias; the reason is
printed and stored as the version tag ``stargan.champion_decision``.
"""
from __future__ import annotations

import base64
import binascii
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
import pandas as pd
import torch

from stargan.config import EVAL_REPORT, Config
from stargan.data.align import align_face
from stargan.data.imageio import decode_image, encode_png
from stargan.errors import StarganError
from stargan.export import export_model
from stargan.files import sha256_file
from stargan.inference import (load_model, model_from_state, to_tensor, translate_latent, translate_reference,
                               translate_v1)
from stargan.tracking import RUN_ID_KEY, Tracker, provenance_tags
from stargan.training.checkpoint import TrainState, check_compatible, load_state, save_state
from stargan.visualize import to_uint8

TAG_OBJECTIVE = "stargan.objective"
TAG_OBJECTIVE_KEY = "stargan.objective_key"
TAG_DECISION = "stargan.champion_decision"
TAG_MOVED = "stargan.alias_moved"


class RegistryError(StarganError, RuntimeError):
    """The model cannot be logged or registered; the message says why."""


# ---------------------------------------------------------------------------------- pyfunc

class StarGANPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow python_function wrapper around :mod:`stargan.inference`: images in, images out."""
    def load_context(self, context) -> None:
        # A w_hpf > 0 v2 model ships its FAN weights as the "wing" artifact (register_model).
        self.model = load_model(context.artifacts["checkpoint"], wing_path=context.artifacts.get("wing"))

    def predict(self, context, model_input, params=None):  # no type hints: the signature validates
        from mlflow.exceptions import MlflowException

        # Scoped, not torch.set_grad_enabled(False): the pyfunc is loaded inside other programs
        # (tests, notebooks, training drivers) whose autograd must stay on.
        try:
            with torch.no_grad():
                return predict_images(self.model, model_input)
        except (ValueError, StarganError) as e:   # bad input: its reason in the response, not a stack trace
            raise MlflowException.invalid_parameter_value(str(e)) from None


def _column(model_input: Any, name: str, required: bool = True) -> list:
    try:
        value = model_input[name]
    except (KeyError, IndexError):
        if required:
            raise ValueError(f"input {name!r} is missing") from None
        return []
    values = value.tolist() if hasattr(value, "tolist") else list(np.atleast_1d(value))
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def decode_b64_image(value: Any, size: int, what: str) -> torch.Tensor:
    """A base64 PNG/JPEG of an aligned face crop -> model input [1, 3, size, size]."""
    try:
        data = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not base64 text (send the PNG or JPEG file's bytes base64-encoded)") from None
    return to_tensor(align_face(decode_image(data, name=what), size, crop=0).image)


def encode_b64_png(image: torch.Tensor) -> str:
    """A model output [3, S, S] in [-1, 1] -> base64 PNG."""
    return base64.b64encode(encode_png(to_uint8(image[None])[0])).decode()


def predict_images(model, model_input: Any) -> pd.DataFrame:
    """The pyfunc's contract (module docstring) on a loaded :class:`~stargan.inference.Model`."""
    s = model.image_size
    x = torch.cat([decode_b64_image(v, s, f"image (row {i})") for i, v in enumerate(_column(model_input, "image"))])
    targets = [str(t) for t in _column(model_input, "target")]
    if len(targets) != x.shape[0]:
        raise ValueError(f"target: {len(targets)} names for {x.shape[0]} images")
    if model.kind == "v1":
        out = translate_v1(model, x, targets)
    else:
        seeds = _column(model_input, "seed", False) or [None] * len(targets)
        refs = _column(model_input, "reference", False) or [None] * len(targets)
        out = torch.empty_like(x)
        for i, (seed, ref, target) in enumerate(zip(seeds, refs, targets)):
            if seed is None and ref is None:
                seed = 0                                            # the default style
            if seed is not None and int(seed) >= 0:
                out[i] = translate_latent(model, x[i:i + 1], [target], [int(seed)])[0]
            elif ref is not None:
                out[i] = translate_reference(model, x[i:i + 1], decode_b64_image(ref, s, f"reference (row {i})"),
                                             [target])[0]
            else:
                raise ValueError(f"row {i}: seed {seed} asks for a reference image, and none was given")
    return pd.DataFrame({"image": [encode_b64_png(o) for o in out]})


def example_input(model, n: int = 1) -> pd.DataFrame:
    """``n`` rows of the contract (a generated face crop, the model's first/last target)."""
    g = np.random.default_rng(0)
    face = base64.b64encode(encode_png(g.integers(0, 256, (model.image_size, model.image_size, 3), np.uint8))).decode()
    rows = {"image": [face] * n,
            "target": [model.layout.datasets[0].label_names[0] if model.kind == "v1" else model.target_names()[-1]] * n}
    if model.kind == "v2":
        rows["seed"] = list(range(n))
    return pd.DataFrame(rows)


def signature_for(model):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [ColSpec("string", "image"), ColSpec("string", "target")]
    if model.kind == "v2":
        inputs += [ColSpec("long", "seed", required=False), ColSpec("string", "reference", required=False)]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("string", "image")]))


def pip_requirements() -> list[str]:
    """Pinned to what is installed (no inference subprocess; torch's local ``+cpu`` label dropped)."""
    out = []
    for dist in ("torch", "numpy", "pyyaml", "mlflow", "opencv-python-headless", "pillow"):
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
             eval_json: Path | None = None, tags: dict[str, str] | None = None,
             description: str | None = None) -> Registered:
    """Log the checkpoint's model as a pyfunc into its training run, register it under
    ``export.registered_name`` and move ``export.alias`` if it is better (module docstring).
    ``tags`` are added to the version's own, ``description`` becomes the version's description
    (e.g. an imported official model's source, checksum and licence)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    import stargan

    e = cfg.export
    extra_tags = dict(tags or {})
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
    artifacts = {}
    if model.kind == "v2" and model.config.train.v2.w_hpf > 0:
        # The FAN weights travel with the model, so serving it needs no file at the trained path.
        artifacts["wing"] = str(model.config.train.v2.wing_path)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts["checkpoint"] = str(slim_checkpoint(state, Path(tmp)))
        with tracking(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=StarGANPyfunc(), artifacts=artifacts,
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
            "stargan.step": str(state.step), "stargan.kind": model.kind} | provenance_tags(repo_root) | (extra_tags or {})
    if objective is not None:
        tags[TAG_OBJECTIVE] = repr(objective)
    for k, v in tags.items():
        client.set_model_version_tag(e.registered_name, version, k, v)
    if description:
        client.update_model_version(e.registered_name, version, description=description)
    if moved:
        client.set_registered_model_alias(e.registered_name, e.alias, version)
    verb = f"now @{e.alias}" if moved else f"registered WITHOUT moving @{e.alias}"
    print(f"[export] {e.registered_name} v{version} {verb}: {reason}")
    return Registered(name=e.registered_name, version=version, model_uri=info.model_uri, run_id=run_id,
                      alias=e.alias, alias_moved=moved, reason=reason, objective=objective, tracking_uri=tracking_uri)


def export_and_register(cfg: Config, repo_root: Path, checkpoint: Path, *, register: bool,
                        tags: dict[str, str] | None = None, description: str | None = None,
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
    return report, register_model(checkpoint, cfg, repo_root, export_dir=out, eval_json=Path(repo_root) / EVAL_REPORT,
                                  tags=tags, description=description)
