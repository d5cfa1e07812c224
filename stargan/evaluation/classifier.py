"""The attribute/expression classifier of the StarGAN protocol (the "judge"): trained on real
training images, then used to check that translations land in their target domain.

``evaluate.classifier_arch`` picks the network (stargan/evaluation/classifier_nets.py: ``resnet18``,
He et al.'s ResNet-18 at ``classifier_width: 64``, for real faces; ``small``, the compact one the
synthetic CPU default trains in seconds), ``classifier_width`` / ``classifier_iters`` size it.
Multi-label sets (CelebA) are trained with a sigmoid per attribute, one-hot sets (RaFD) with a
softmax. The global-pooled features double as the feature space of ``fid_classifier_features``.
The judge's own per-label scores on real test images (stargan/evaluation/judge.py) travel with it,
so every target accuracy can be reported next to them.

Saved as ``torch.save`` of tensors and plain types (loadable with ``weights_only=True``).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from stargan.evaluation.classifier_nets import ARCHS, ResNetClassifier, build_classifier_net
from stargan.evaluation.judge import LabelCounts, exclusive_counts
from stargan.progress import Progress
from stargan.training.labels import HAIR_COLOURS

__all__ = ["ARCHS", "Classifier", "ResNetClassifier", "classifier_path", "evaluate_real", "load_classifier",
           "save_classifier", "train_classifier", "train_classifiers"]

FORMAT = "stargan-classifier/1"


@dataclass
class Classifier:
    """A trained classifier with the label space it predicts."""
    net: ResNetClassifier
    dataset: str
    label_names: list[str]
    label_kind: str                 # "multi" | "onehot"
    image_size: int
    width: int
    metrics: dict
    arch: str = "small"             # files saved before classifier_arch existed hold the small net

    @property
    def hair(self) -> list[int]:
        """Exclusive hair-colour columns (predicted by argmax among them, as the labels are)."""
        cols = [i for i, n in enumerate(self.label_names) if n in HAIR_COLOURS]
        return cols if len(cols) > 1 else []

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """0/1 label predictions [B, L]: argmax for one-hot sets and for the hair-colour group,
        a 0.5 threshold for the other attributes."""
        logits = self.net(x)
        if self.label_kind == "onehot":
            return F.one_hot(logits.argmax(1), logits.size(1)).float()
        pred = (logits > 0).float()
        if self.hair:
            h = torch.tensor(self.hair, device=logits.device)
            pred[:, h] = F.one_hot(logits[:, h].argmax(1), len(self.hair)).float()
        return pred

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def judged_pairs(self, labels: Tensor) -> Tensor:
        """[B, L] bool: the (image, label) pairs whose truth the judge's answer can be checked
        against (a hair-colour column only where the face has exactly one of the group's colours)."""
        return exclusive_counts(labels, self.hair if self.label_kind == "multi" else [])


def loss_fn(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    if kind == "onehot":
        return F.cross_entropy(logits, labels.argmax(1))
    return F.binary_cross_entropy_with_logits(logits, labels)


def label_accuracy(pred: Tensor, labels: Tensor, kind: str) -> Tensor:
    """Per-image accuracy: class match (one-hot) or fraction of attributes right (multi)."""
    if kind == "onehot":
        return (pred.argmax(1) == labels.argmax(1)).float()
    return (pred == (labels > 0.5).float()).float().mean(1)


def train_classifier(shard_dir: Path, *, dataset: str, image_size: int, width: int, iters: int, batch_size: int,
                     lr: float, seed: int = 0, device: str | torch.device = "cpu", progress_every_s: float = 2.0,
                     arch: str = "small", augment: bool = True) -> Classifier:
    """Train the ``arch`` network on the ``train`` split of one dataset's shards (``augment``: the
    ``judge_train`` augmentations of stargan/data/transforms.py, else flips only; Adam, one-cycle
    learning rate). A progress line (step/total, rate, ETA, mean loss
    since the last line) at most every ``progress_every_s`` seconds, and at the end."""
    from stargan.data.loader import TrainStream, make_loader

    torch.manual_seed(seed)
    stream = TrainStream(shard_dir, batch_size=batch_size, image_size=image_size,
                         mode="judge_train" if augment else "v1_train", seed=seed)
    names, kind = list(stream.manifest["label_names"]), stream.manifest["label_kind"]
    net = build_classifier_net(arch, len(names), width, image_size).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters, pct_start=0.15)
    net.train()
    t0, running, since = time.time(), 0.0, 0
    progress = Progress(f"[classifier] {dataset}", iters, "steps", every_s=progress_every_s, start=0)
    for step, batch in enumerate(make_loader(stream), 1):
        x, y = batch["image"].to(device), batch["label"].to(device)
        loss = loss_fn(net(x), y, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running, since = running + float(loss.detach()), since + 1
        if progress.due(step):
            progress.update(step, f"loss {running / since:.4f}")
            running, since = 0.0, 0
        if step >= iters:
            break
    net.eval().requires_grad_(False)
    return Classifier(net, dataset, names, kind, image_size, width,
                      {"train_seconds": round(time.time() - t0, 2), "augment": augment}, arch)


@torch.no_grad()
def evaluate_real(clf: Classifier, shard_dir: Path, split: str = "test", batch_size: int = 64,
                  max_images: int = 0, device: str | torch.device = "cpu") -> dict:
    """The judge on real images of ``split``: ``accuracy`` (class match for one-hot sets, share of
    attributes right for multi-label ones), ``images``, and per label name under ``labels`` its
    accuracy and balanced accuracy (stargan/evaluation/judge.py says which images count)."""
    from stargan.data.loader import iter_split

    correct, n, counts = 0.0, 0, LabelCounts(list(clf.label_names))
    for batch in iter_split(shard_dir, split, batch_size, clf.image_size):
        if max_images and n >= max_images:
            break
        x, y = batch["image"].to(device), batch["label"].to(device)
        if max_images:
            x, y = x[:max_images - n], y[:max_images - n]
        pred = clf.predict(x)
        correct += float(label_accuracy(pred, y, clf.label_kind).double().sum())
        counts.add(pred, y, clf.judged_pairs(y))
        n += x.size(0)
    if n == 0:
        raise ValueError(f"{shard_dir}: no '{split}' images to evaluate the classifier on")
    return {"accuracy": correct / n, "images": n, "labels": counts.scores()}


def save_classifier(clf: Classifier, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in clf.net.state_dict().items()},
               "meta_json": json.dumps({"dataset": clf.dataset, "label_names": clf.label_names,
                                        "label_kind": clf.label_kind, "image_size": clf.image_size,
                                        "width": clf.width, "arch": clf.arch, "metrics": clf.metrics},
                                       sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_classifier(path: Path, device: str | torch.device = "cpu") -> Classifier:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    meta = json.loads(payload["meta_json"])
    arch = meta.get("arch", "small")
    if arch not in ARCHS:
        raise ValueError(f"{path}: classifier architecture {arch!r} is not one of {', '.join(ARCHS)}")
    net = build_classifier_net(arch, len(meta["label_names"]), meta["width"], meta["image_size"])
    net.load_state_dict(payload["state_dict"])
    return Classifier(net.eval().requires_grad_(False).to(device), meta["dataset"], list(meta["label_names"]),
                      meta["label_kind"], meta["image_size"], meta["width"], meta.get("metrics", {}), arch)


def classifier_path(repo_root: Path, dataset: str) -> Path:
    return Path(repo_root) / "models" / "classifier" / f"{dataset}.pt"


def train_classifiers(cfg, repo_root: Path, device: str | torch.device | None = None) -> dict:
    """The classifier stage: one ``evaluate.classifier_arch`` classifier per dataset of
    ``train.datasets`` (all datasets when empty) at ``train.image_size``, saved to
    ``models/classifier/<dataset>.pt``; returns each one's scores on the real test images."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ev = cfg.evaluate
    out = {}
    for ds in cfg.train.datasets or list(cfg.data.datasets):
        shard_dir = Path(repo_root) / cfg.data.root / "shards" / ds
        clf = train_classifier(shard_dir, dataset=ds, image_size=cfg.train.image_size, width=ev.classifier_width,
                               iters=ev.classifier_iters, batch_size=ev.classifier_batch_size, lr=ev.classifier_lr,
                               seed=cfg.train.seed, device=device, arch=ev.classifier_arch,
                               augment=ev.classifier_augment)
        clf.metrics.update(evaluate_real(clf, shard_dir, "test", ev.batch_size, device=device))
        clf.metrics.update(arch=clf.arch, width=clf.width, iters=ev.classifier_iters,
                           params=sum(p.numel() for p in clf.net.parameters()))
        save_classifier(clf, classifier_path(repo_root, ds))
        out[ds] = clf.metrics
    return out
