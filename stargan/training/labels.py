"""The StarGAN (v1) label vector for one dataset or several trained jointly (the mask vector).

With one dataset the model label is that dataset's labels. With n > 1 datasets it is
``[c_1, ..., c_n, m]``: every dataset's label slice in order, zeros for the datasets whose
labels a batch does not have, and ``m``, a one-hot over datasets saying which slice is known.
D's classification head predicts ``[c_1, ..., c_n]`` (no mask), and its loss is taken on the
known slice only. Test-time targets follow the official ``create_labels``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

LABEL_KINDS = ("multi", "onehot")
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")


@dataclass(frozen=True)
class DatasetLabels:
    """One dataset's labels: ``multi`` = independent binary attributes, ``onehot`` = one class."""
    name: str
    label_names: tuple[str, ...]
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"dataset {self.name!r}: label kind {self.kind!r}; expected one of {LABEL_KINDS}")
        if not self.label_names:
            raise ValueError(f"dataset {self.name!r}: no label names")
        object.__setattr__(self, "label_names", tuple(self.label_names))


class LabelLayout:
    """Where each dataset's labels sit in G's input label and in D's classification output."""

    def __init__(self, datasets: Sequence[DatasetLabels | tuple[str, Sequence[str], str]]) -> None:
        if not datasets:
            raise ValueError("LabelLayout: at least one dataset is needed")
        self.datasets: tuple[DatasetLabels, ...] = tuple(
            d if isinstance(d, DatasetLabels) else DatasetLabels(d[0], tuple(d[1]), d[2]) for d in datasets)
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"LabelLayout: dataset names repeat: {names}")
        self._starts = []
        start = 0
        for d in self.datasets:
            self._starts.append(start)
            start += len(d.label_names)
        self.cls_dim = start
        self.mask_dim = len(self.datasets) if len(self.datasets) > 1 else 0
        self.c_dim = self.cls_dim + self.mask_dim

    # ------------------------------------------------------------------ description
    @property
    def joint(self) -> bool:
        return self.mask_dim > 0

    def index(self, name: str) -> int:
        for i, d in enumerate(self.datasets):
            if d.name == name:
                return i
        raise KeyError(f"dataset {name!r} is not in the label layout ({[d.name for d in self.datasets]})")

    def cls_slice(self, dataset_idx: int) -> slice:
        """The dataset's labels within D's cls output (and within G's label, which starts the same)."""
        start = self._starts[dataset_idx]
        return slice(start, start + len(self.datasets[dataset_idx].label_names))

    def to_dict(self) -> dict:
        return {"datasets": [{"name": d.name, "label_names": list(d.label_names), "kind": d.kind}
                             for d in self.datasets]}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelLayout":
        return cls([DatasetLabels(x["name"], tuple(x["label_names"]), x["kind"]) for x in d["datasets"]])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelLayout) and self.datasets == other.datasets

    def __repr__(self) -> str:
        return f"LabelLayout(c_dim={self.c_dim}, cls_dim={self.cls_dim}, datasets={list(self.datasets)})"

    # ------------------------------------------------------------------ label tensors
    def dataset_labels(self, dataset_idx: int, labels: Tensor) -> Tensor:
        """Float [B, L] labels of the dataset; one-hot class indices [B] are expanded."""
        d = self.datasets[dataset_idx]
        n = len(d.label_names)
        if labels.dim() == 1 and d.kind == "onehot":
            labels = torch.nn.functional.one_hot(labels.long(), n)
        if labels.dim() != 2 or labels.size(1) != n:
            raise ValueError(f"dataset {d.name!r}: labels of shape {tuple(labels.shape)}; expected [B, {n}]")
        return labels.float()

    def to_model_label(self, dataset_idx: int, labels: Tensor) -> Tensor:
        """[B, L] labels of dataset ``dataset_idx`` -> [B, c_dim] G input (other slices 0, mask set)."""
        labels = self.dataset_labels(dataset_idx, labels)
        out = labels.new_zeros(labels.size(0), self.c_dim)
        out[:, self.cls_slice(dataset_idx)] = labels
        if self.joint:
            out[:, self.cls_dim + dataset_idx] = 1.0
        return out

    def sample_targets(self, dataset_idx: int, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training targets as in the official code: the batch's own labels in a random order."""
        labels = self.dataset_labels(dataset_idx, labels)
        return labels[target_permutation(labels.size(0), labels.device, generator)]

    def test_targets(self, dataset_idx: int, labels: Tensor) -> list[tuple[str, Tensor]]:
        """One target per label, as the official ``create_labels``: hair colours set exclusively,
        other attributes flipped (multi); each class in turn (onehot). Dataset label space."""
        d = self.datasets[dataset_idx]
        labels = self.dataset_labels(dataset_idx, labels)
        out = []
        if d.kind == "onehot":
            for i, name in enumerate(d.label_names):
                t = torch.zeros_like(labels)
                t[:, i] = 1.0
                out.append((name, t))
            return out
        hair = [i for i, n in enumerate(d.label_names) if n in HAIR_COLOURS]
        for i, name in enumerate(d.label_names):
            t = labels.clone()
            if i in hair:
                t[:, hair] = 0.0
                t[:, i] = 1.0
            else:
                t[:, i] = 1.0 - t[:, i]
            out.append((name, t))
        return out

    def all_target_names(self) -> list[str]:
        """Names of :meth:`all_test_targets`, in order; ``dataset/label`` when joint."""
        return [f"{d.name}/{n}" if self.joint else n for d in self.datasets for n in d.label_names]

    def all_test_targets(self, dataset_idx: int, labels: Tensor) -> list[tuple[str, Tensor]]:
        """Model labels [B, c_dim] for every target of every dataset, for images of ``dataset_idx``.

        Joint models translate any image into any dataset's targets (the official multi-dataset
        sample grids): the image's own dataset starts from its labels, another dataset's
        (unknown) labels start from zeros.
        """
        batch = labels.size(0)
        out = []
        for j, d in enumerate(self.datasets):
            base = labels if j == dataset_idx else torch.zeros(batch, len(d.label_names), device=labels.device)
            for name, t in self.test_targets(j, base):
                out.append((f"{d.name}/{name}" if self.joint else name, self.to_model_label(j, t)))
        return out


def target_permutation(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """The random order in which a batch's own labels become its targets (:meth:`LabelLayout.sample_targets`),
    drawn from ``generator`` (which may live on the CPU while the batch is on CUDA), on ``device``. The
    CUDA-graph step draws it here too, so both steps consume the same randomness."""
    gen_device = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=gen_device).to(device)
