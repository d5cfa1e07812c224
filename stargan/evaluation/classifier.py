"""The attribute/expression classifier of the StarGAN protocol: trained on real training images,
then used to check that translations land in their target domain.

A ResNet-18-shaped network (BasicBlocks [2, 2, 2, 2], channels w, 2w, 4w, 8w; ``w = 64`` is
ResNet-18 itself, ``evaluate.classifier_width`` shrinks it for the CPU default). Inputs of 96 px
and up get ResNet's 7x7/2 stem + max pool, smaller ones a 3x3/2 stem. Multi-label sets
(CelebA) are trained with a sigmoid per attribute, one-hot sets (RaFD) with a softmax. The
global-pooled ``8w``-d features double as the feature space of ``fid_classifier_features``.

Saved as ``torch.save`` of tensors and plain types (loadable with ``weights_only=True``).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stargan.training.labels import HAIR_COLOURS

FORMAT = "stargan-classifier/1"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNetClassifier(nn.Module):
    def __init__(self, num_labels: int, width: int = 64, image_size: int = 128, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        if image_size >= 96:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_labels)
        self.feature_dim = cin

    def features(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


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
                     lr: float, seed: int = 0, device: str | torch.device = "cpu", log_every: int = 50) -> Classifier:
    """Train on the ``train`` split of one dataset's shards (flip augmentation, Adam)."""
    from stargan.data.loader import TrainStream, make_loader

    torch.manual_seed(seed)
    stream = TrainStream(shard_dir, batch_size=batch_size, image_size=image_size, mode="v1_train", seed=seed)
    names, kind = list(stream.manifest["label_names"]), stream.manifest["label_kind"]
    net = ResNetClassifier(len(names), width, image_size).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters, pct_start=0.15)
    net.train()
    t0, running = time.time(), 0.0
    for step, batch in enumerate(make_loader(stream), 1):
        x, y = batch["image"].to(device), batch["label"].to(device)
        loss = loss_fn(net(x), y, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % log_every == 0 or step == iters:
            print(f"[classifier] {dataset} step {step}/{iters} loss {running / min(log_every, step):.4f} "
                  f"({time.time() - t0:.1f}s)", flush=True)
            running = 0.0
        if step >= iters:
            break
    net.eval().requires_grad_(False)
    return Classifier(net, dataset, names, kind, image_size, width, {"train_seconds": round(time.time() - t0, 2)})


@torch.no_grad()
def evaluate_real(clf: Classifier, shard_dir: Path, split: str = "test", batch_size: int = 64,
                  max_images: int = 0, device: str | torch.device = "cpu") -> dict[str, float]:
    """Accuracy on real images of ``split``: overall, and per label name."""
    from stargan.data.loader import iter_split

    correct, per_label, n = 0.0, torch.zeros(len(clf.label_names), dtype=torch.float64), 0
    for batch in iter_split(shard_dir, split, batch_size, clf.image_size):
        if max_images and n >= max_images:
            break
        x, y = batch["image"].to(device), batch["label"].to(device)
        if max_images:
            x, y = x[:max_images - n], y[:max_images - n]
        pred = clf.predict(x)
        correct += float(label_accuracy(pred, y, clf.label_kind).double().sum())
        if clf.label_kind == "onehot":
            hit = (pred.argmax(1) == y.argmax(1)).double()
            per_label.index_add_(0, y.argmax(1).cpu(), hit.cpu())
        else:
            per_label += (pred == (y > 0.5).float()).double().sum(0).cpu()
        n += x.size(0)
    if n == 0:
        raise ValueError(f"{shard_dir}: no '{split}' images to evaluate the classifier on")
    out = {"accuracy": correct / n, "images": n}
    if clf.label_kind == "multi":
        out.update({f"accuracy/{name}": float(per_label[i] / n) for i, name in enumerate(clf.label_names)})
    return out


def save_classifier(clf: Classifier, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in clf.net.state_dict().items()},
               "meta_json": json.dumps({"dataset": clf.dataset, "label_names": clf.label_names,
                                        "label_kind": clf.label_kind, "image_size": clf.image_size,
                                        "width": clf.width, "metrics": clf.metrics}, sort_keys=True)}
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
    net = ResNetClassifier(len(meta["label_names"]), meta["width"], meta["image_size"])
    net.load_state_dict(payload["state_dict"])
    return Classifier(net.eval().requires_grad_(False).to(device), meta["dataset"], list(meta["label_names"]),
                      meta["label_kind"], meta["image_size"], meta["width"], meta.get("metrics", {}))


def classifier_path(repo_root: Path, dataset: str) -> Path:
    return Path(repo_root) / "models" / "classifier" / f"{dataset}.pt"


def train_classifiers(cfg, repo_root: Path, device: str | torch.device | None = None) -> dict:
    """The classifier stage: one classifier per dataset of ``train.datasets`` (all datasets when
    empty) at ``train.image_size``, saved to ``models/classifier/<dataset>.pt``; returns each one's
    accuracy on the real test images."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ev = cfg.evaluate
    out = {}
    for ds in cfg.train.datasets or list(cfg.data.datasets):
        shard_dir = Path(repo_root) / cfg.data.root / "shards" / ds
        clf = train_classifier(shard_dir, dataset=ds, image_size=cfg.train.image_size, width=ev.classifier_width,
                               iters=ev.classifier_iters, batch_size=ev.classifier_batch_size, lr=ev.classifier_lr,
                               seed=cfg.train.seed, device=device)
        clf.metrics.update(evaluate_real(clf, shard_dir, "test", ev.batch_size, device=device))
        clf.metrics["params"] = sum(p.numel() for p in clf.net.parameters())
        save_classifier(clf, classifier_path(repo_root, ds))
        out[ds] = clf.metrics
    return out
