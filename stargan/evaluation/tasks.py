"""What every metric translates: the test images, the official test-time targets, and the
synthetic ground truth of each translation.

- v1: every test image of every dataset the model was trained on, translated to each target of
  :meth:`LabelLayout.test_targets` (hair colours set exclusively, other attributes flipped,
  each class in turn), plus, for jointly trained models, the other datasets' classes.
- v2: the official task list: for each target domain, each *other* source domain, every test
  image of the source domain, ``num_outs_per_domain`` outputs from latent codes or from
  reference images of the target domain.

Everything is a deterministic generator over batches (no output set is held whole), so each
metric can stream the same translations; small evaluations are memoised by
:meth:`EvalContext.memo` so the generator runs once.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from stargan.config import Config
from stargan.data.align import warp
from stargan.data.loader import iter_split
from stargan.data.synthetic import FaceParams, counterfactual, render
from stargan.data.transforms import build_transform
from stargan.evaluation.classifier import classifier_path, load_classifier
from stargan.evaluation.errors import MetricUnavailable
from stargan.evaluation.image_metrics import l1
from stargan.inference import V1Model, V2Model
from stargan.training.labels import HAIR_COLOURS, LabelLayout




# ----------------------------------------------------------------------------- context

@dataclass
class EvalContext:
    model: V1Model | V2Model
    cfg: Config
    repo_root: Path
    device: torch.device
    max_images: int = 0                    # per dataset (v1) / per source domain (v2); 0 = all
    memo_bytes: int = 256 << 20            # total for all memoised translations
    _memo_used: int = 0
    _classifiers: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict)
    _too_big: set = field(default_factory=set)

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def batch_size(self) -> int:
        return self.cfg.evaluate.batch_size

    def datasets(self) -> list[str]:
        if isinstance(self.model, V1Model):
            return [d.name for d in self.model.layout.datasets]
        return list(self.model.config.train.datasets)

    def shard_dir(self, dataset: str) -> Path:
        d = (self.repo_root / self.cfg.data.root / "shards" / dataset)
        if not (d / "manifest.json").exists():
            raise FileNotFoundError(f"{d}: no shards for dataset '{dataset}' (run `dvc repro shard`)")
        return d

    def manifest(self, dataset: str) -> dict:
        return json.loads((self.shard_dir(dataset) / "manifest.json").read_text())

    def classifier(self, dataset: str):
        """The dataset's trained classifier (``models/classifier/<dataset>.pt``)."""
        if dataset not in self._classifiers:
            path = classifier_path(self.repo_root, dataset)
            if not path.exists():
                raise MetricUnavailable(f"no attribute classifier for '{dataset}' at {path}",
                                        "run `dvc repro classifier` (or pipelines/classifier.py)")
            clf = load_classifier(path, self.device)
            if clf.image_size != self.image_size:
                raise MetricUnavailable(f"the classifier at {path} was trained at {clf.image_size} px, the model "
                                        f"translates at {self.image_size} px", "re-run `dvc repro classifier`")
            self._classifiers[dataset] = clf
        return self._classifiers[dataset]

    def batches(self, dataset: str, split: str = "test", limit: int | None = None) -> Iterator[dict]:
        """Real images of ``split`` at the model's size, on the device, at most ``limit``
        (default ``max_images``) of them."""
        limit = self.max_images if limit is None else limit
        seen = 0
        for b in iter_split(self.shard_dir(dataset), split, self.batch_size, self.image_size):
            if limit and seen >= limit:
                return
            n = len(b["key"]) if not limit else min(len(b["key"]), limit - seen)
            yield _take(b, n, self.device)
            seen += n

    def memo(self, key: tuple, make: Callable[[], Iterator]) -> Iterator:
        """Iterate ``make()``, keeping the items for the next caller while all kept items fit
        in ``memo_bytes`` (else the next caller regenerates them)."""
        if key in self._memo:
            yield from self._memo[key]
            return
        if key in self._too_big:
            yield from make()
            return
        kept, size = [], 0
        for item in make():
            if kept is not None:
                size += _nbytes(item)
                if self._memo_used + size <= self.memo_bytes:
                    kept.append(item)
                else:
                    kept = None
                    self._too_big.add(key)
            yield item
        if kept is not None:
            self._memo[key] = kept
            self._memo_used += size


def _take(b: dict, n: int, device: torch.device) -> dict:
    out = {}
    for k, v in b.items():
        v = v[:n]
        out[k] = v.to(device) if isinstance(v, Tensor) and k in ("image", "label") else v
    return out


def _nbytes(obj) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 64


# ------------------------------------------------------------------------------ v1 targets

@dataclass
class V1Target:
    name: str              # "celeba/Black_Hair" when joint, else "Black_Hair"
    dataset: str           # the dataset whose labels the target sets
    dataset_idx: int
    attr: int              # the named label's column in that dataset
    labels: Tensor         # [B, L_t] target labels in that dataset's space
    model_label: Tensor    # [B, c_dim] G's input
    own: bool              # the source image's own dataset (its other labels are known)
    sets_class: bool       # one-hot class or hair colour (vs an attribute flip)


def v1_targets(layout: LabelLayout, source_idx: int, labels: Tensor) -> list[V1Target]:
    out = []
    for j, d in enumerate(layout.datasets):
        base = labels if j == source_idx else labels.new_zeros(labels.size(0), len(d.label_names))
        for attr, (name, t) in enumerate(layout.test_targets(j, base)):
            sets = d.kind == "onehot" or d.label_names[attr] in HAIR_COLOURS
            out.append(V1Target(f"{d.name}/{name}" if layout.joint else name, d.name, j, attr, t,
                                layout.to_model_label(j, t), j == source_idx, sets))
    return out


def v1_translations(ctx: EvalContext, dataset: str) -> Iterator[tuple[dict, list[tuple[V1Target, Tensor]]]]:
    """``(batch, [(target, G(x, c_target))])`` per test batch of ``dataset``."""
    model = ctx.model
    assert isinstance(model, V1Model)
    di = model.layout.index(dataset)

    def make():
        for batch in ctx.batches(dataset):
            outs = []
            for t in v1_targets(model.layout, di, batch["label"]):
                outs.append((t, model.translate(batch["image"], t.model_label)))
            yield batch, outs

    return ctx.memo(("v1", dataset), make)


# ------------------------------------------------------------------------------ v2 tasks

def v2_dataset(ctx: EvalContext) -> str:
    return ctx.model.config.train.datasets[0]


def v2_domain_batches(ctx: EvalContext, domain: int, split: str = "test", limit: int | None = None) -> Iterator[dict]:
    """Batches of real images of one v2 domain (``domain`` tensor added), re-batched."""
    model = ctx.model
    limit = ctx.max_images if limit is None else limit
    pending: list[dict] = []
    seen = 0

    def emit(rows: list[dict]) -> dict:
        return {"image": torch.stack([r["image"] for r in rows]), "label": torch.stack([r["label"] for r in rows]),
                "key": [r["key"] for r in rows], "matrix": torch.stack([r["matrix"] for r in rows]),
                "extra": [r["extra"] for r in rows],
                "domain": torch.full((len(rows),), domain, dtype=torch.int64, device=ctx.device)}

    for b in ctx.batches(v2_dataset(ctx), split, limit=0):
        dom, _ = model.domains.assign(b["label"].cpu().numpy())
        for i in np.flatnonzero(dom == domain):
            if limit and seen >= limit:
                break
            pending.append({"image": b["image"][i], "label": b["label"][i], "key": b["key"][i],
                            "matrix": b["matrix"][i], "extra": b["extra"][i]})
            seen += 1
            if len(pending) == ctx.batch_size:
                yield emit(pending)
                pending = []
        if limit and seen >= limit:
            break
    if pending:
        yield emit(pending)


def v2_tasks(ctx: EvalContext) -> list[tuple[int, int]]:
    """(source, target) domain pairs, target-major as the official ``eval.py``."""
    k = ctx.model.domains.num_domains
    return [(s, t) for t in range(k) for s in range(k) if s != t]


def _z(ctx: EvalContext, n: int, *seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([ctx.cfg.train.seed, *seed]).generate_state(1)[0]))
    return torch.randn(n, ctx.model.latent_dim, generator=g).to(ctx.device)


def _reference_cycle(ctx: EvalContext, domain: int) -> Iterator[Tensor]:
    """Test images of the target domain, one at a time, cycling (the official reference loader)."""
    while True:
        any_ = False
        for b in v2_domain_batches(ctx, domain):
            for img in b["image"]:
                any_ = True
                yield img
        if not any_:
            raise MetricUnavailable(f"no test images of domain '{ctx.model.domains.names[domain]}' to use as "
                                    "references", "check train.v2.domains and the test split")


def v2_translations(ctx: EvalContext, src: int, trg: int, mode: str, num_outs: int | None = None
                    ) -> Iterator[tuple[dict, list[Tensor]]]:
    """``(source batch, [num_outs outputs [B,3,H,W]])`` for one task, ``mode`` latent|reference."""
    model = ctx.model
    assert isinstance(model, V2Model) and mode in ("latent", "reference")
    k = num_outs or ctx.cfg.evaluate.num_outs_per_domain

    def make():
        refs = _reference_cycle(ctx, trg) if mode == "reference" else None
        for bi, batch in enumerate(v2_domain_batches(ctx, src)):
            x, n = batch["image"], batch["image"].size(0)
            y = torch.full((n,), trg, dtype=torch.int64, device=ctx.device)
            outs = []
            for j in range(k):
                if mode == "latent":
                    outs.append(model.translate_latent(x, y, _z(ctx, n, src, trg, bi, j)))
                else:
                    ref = torch.stack([next(refs) for _ in range(n)])
                    outs.append(model.translate_reference(x, ref, y))
            yield batch, outs

    return ctx.memo(("v2", src, trg, mode, k), make)


def v2_domain_labels(model: V2Model, label_names: list[str], trg: int) -> tuple[list[str], list[int]]:
    """The label names and values a v2 domain fixes (for the counterfactual renderer)."""
    dm = model.domains
    names = [label_names[c] for c in dm.columns]
    if dm.binary:
        return names, [trg]
    return names, [int(i == trg) for i in range(len(names))]


# --------------------------------------------------------------------------- ground truth

class GroundTruth:
    """Renders the true counterfactual of a synthetic test image, aligned and resized exactly as
    the pipeline prepared the input: render the raw canvas (``synthetic.image_size``), warp with
    the image's stored raw->aligned matrix (``stargan.data.align.warp``), then the eval transform."""
    def __init__(self, raw_size: int, aligned_size: int, image_size: int, cache_items: int = 20000):
        self.raw_size, self.aligned_size = raw_size, aligned_size
        self.transform = build_transform("eval", image_size, aligned_size)
        self._cache: OrderedDict = OrderedDict()
        self.cache_items = cache_items

    def render(self, params: dict, matrix: Tensor, label_names: list[str] | None = None,
               labels: list[float] | None = None) -> Tensor:
        """[3, H, W] in [-1, 1]; ``label_names=None`` renders the unchanged parameters."""
        p = counterfactual(params, label_names or [], labels or [])
        m = np.asarray(matrix.detach().cpu().double().numpy()).reshape(2, 3)
        key = (json.dumps(p.to_dict(), sort_keys=True), tuple(np.round(m.reshape(-1), 6)))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        rgb, _ = render(p, self.raw_size)
        img = self.transform([warp(rgb, m, self.aligned_size)])[0]
        self._cache[key] = img
        if len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)
        return img

    def changed(self, batch: dict, label_names: list[str], labels: Tensor) -> Tensor:
        """[B] bool: does the target change the face's parameters at all? (A hair-colour target
        equal to the face's own colour does not: its counterfactual *is* the input.)"""
        return torch.tensor([counterfactual(params, label_names, labels[i].tolist()) != FaceParams.from_dict(params)
                             for i, params in enumerate(batch["extra"])])

    def batch(self, batch: dict, label_names: list[str] | None, labels: Tensor | None, device) -> Tensor:
        rows = []
        for i, params in enumerate(batch["extra"]):
            rows.append(self.render(params, batch["matrix"][i], label_names,
                                    None if labels is None else labels[i].tolist()))
        return torch.stack(rows).to(device)


_GT: dict[tuple, GroundTruth] = {}


def ground_truth(ctx: EvalContext, dataset: str) -> GroundTruth:
    """The (process-wide, cached) renderer for ``dataset``; :class:`MetricUnavailable` for real data."""
    spec = ctx.cfg.data.datasets.get(dataset)
    if spec is None or spec.source != "synthetic":
        raise MetricUnavailable(f"'{dataset}' is not synthetic: real images have no ground-truth counterfactual",
                                "use the synthetic datasets (data.datasets.<name>.source: synthetic) for this metric")
    key = (ctx.cfg.synthetic.image_size, ctx.manifest(dataset)["image_size"], ctx.image_size)
    if key not in _GT:
        _GT[key] = GroundTruth(*key)
    return _GT[key]


NOT_ONE_FACE = "G gets zeros for the attributes this image has no labels for, so the target is not one face"


def v1_truth(ctx: EvalContext, gt: GroundTruth, batch: dict, t: V1Target) -> tuple[Tensor | None, str | None]:
    """``(true counterfactuals [B, 3, H, W], None)`` of a synthetic test batch for target ``t``, or
    ``(None, why not)``: an RaFD-like face given CelebA attributes (``NOT_ONE_FACE``), or labels the
    renderer does not draw."""
    d = ctx.model.layout.datasets[t.dataset_idx]
    if not t.own and d.kind != "onehot":
        return None, NOT_ONE_FACE
    try:
        return gt.batch(batch, list(d.label_names), t.labels, ctx.device), None
    except ValueError as e:
        return None, str(e)


def v1_judge_truth(ctx: EvalContext, gt: GroundTruth, batch: dict, t: V1Target) -> Tensor | None:
    """True faces showing what the target accuracy scores for ``t`` (``target_hit``): the true
    counterfactual where the target is one face; for an RaFD-like face given CelebA attributes
    (``NOT_ONE_FACE``: its other CelebA labels are unknown, so G gets zeros for them) the face with
    only the scored label changed. The judge must read that label there, on the other dataset's
    faces, for the target's accuracy to measure G at all. None where the renderer cannot draw it."""
    truth, why_not = v1_truth(ctx, gt, batch, t)
    if why_not != NOT_ONE_FACE:
        return truth
    name = ctx.model.layout.datasets[t.dataset_idx].label_names[t.attr]
    try:
        return gt.batch(batch, [name], t.labels[:, t.attr:t.attr + 1], ctx.device)
    except ValueError:
        return None


FLOOR_LIMIT = 0.08          # mean L1 in [0, 1] above which the renderer does not match the data


def render_floor(ctx: EvalContext, gt: GroundTruth, dataset: str, batch: dict) -> float:
    """Mean L1 of the batch's unchanged parameters rendered vs its stored images (JPEG and
    resampling noise); :class:`MetricUnavailable` above ``FLOOR_LIMIT``, where the data was made
    with other settings and no rendered truth can be trusted."""
    floor = l1(gt.batch(batch, None, None, ctx.device), batch["image"]).mean().item()
    if floor > FLOOR_LIMIT:
        raise MetricUnavailable(f"rendering the stored parameters of '{dataset}' test images does not reproduce "
                                f"them (L1 {floor:.3f} > {FLOOR_LIMIT}): the data was made with other settings",
                                "evaluate with the params.yaml the data was built with (synthetic.image_size, "
                                "align.image_size)")
    return floor
