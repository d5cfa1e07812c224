"""StarGAN v2 domains from a dataset's labels.

v2 conditions on one domain index per image, while the shards carry label vectors. The rule:

- ``onehot`` labels (RaFD expressions, AFHQ folders): every class is a domain, or only the
  classes named in ``train.v2.domains`` (images of other classes get -1).
- ``multi`` labels (CelebA attributes) with ONE attribute ``X``: two domains, ``no_X`` and ``X``
  (e.g. ``Male`` -> ``["no_Male", "Male"]``; CelebA-HQ's female/male in the paper).
- ``multi`` labels with SEVERAL attributes: one domain per attribute, which must be exclusive;
  an image with none or more than one of them set belongs to no domain (-1). Callers exclude
  those images and report how many (:meth:`DomainMap.assign` returns the count).

An empty ``domains`` list means every label of the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from stargan.errors import StarganError


class DomainError(StarganError, ValueError):
    """Domains that cannot be built from the dataset's labels; the message names the fix."""


@dataclass(frozen=True)
class DomainMap:
    names: list[str]            # domain names, in domain-index order
    label_kind: str             # "onehot" | "multi"
    columns: list[int]          # label columns that define the domains
    binary: bool                # multi-label with one attribute: {no_X, X}

    @property
    def num_domains(self) -> int:
        return len(self.names)

    def domain_of(self, labels: Sequence[int]) -> int:
        """Domain index of one label vector, or -1 when it belongs to no domain."""
        return int(self.assign(np.asarray(labels, dtype=np.int64)[None, :])[0][0])

    def assign(self, labels: np.ndarray) -> tuple[np.ndarray, int]:
        """Vectorised :meth:`domain_of` over ``labels [N, L]`` -> ``(domains int64 [N], excluded)``."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise DomainError(f"expected a [N, L] label matrix, got shape {labels.shape}")
        sel = labels[:, self.columns] > 0
        if self.binary:
            dom = sel[:, 0].astype(np.int64)
        else:
            exactly_one = sel.sum(axis=1) == 1
            dom = np.where(exactly_one, sel.argmax(axis=1), -1).astype(np.int64)
        return dom, int((dom < 0).sum())


def resolve_domains(label_names: Sequence[str], label_kind: str,
                    domains: Sequence[str] = ()) -> DomainMap:
    """Build the :class:`DomainMap` for ``train.v2.domains`` over a dataset's labels."""
    label_names = list(label_names)
    if label_kind not in ("onehot", "multi"):
        raise DomainError(f"label kind {label_kind!r}: expected 'onehot' or 'multi'")
    wanted = list(domains) or label_names
    unknown = [d for d in wanted if d not in label_names]
    if unknown:
        raise DomainError(f"train.v2.domains: {', '.join(unknown)} not among the dataset's labels "
                          f"({', '.join(label_names)})")
    if len(set(wanted)) != len(wanted):
        raise DomainError(f"train.v2.domains: repeated name in {wanted}")
    columns = [label_names.index(d) for d in wanted]
    if label_kind == "multi" and len(wanted) == 1:
        x = wanted[0]
        return DomainMap(names=[f"no_{x}", x], label_kind="multi", columns=columns, binary=True)
    if len(wanted) < 2:
        raise DomainError(f"train.v2.domains: {wanted} gives one domain; v2 needs at least two "
                          "(name more classes, or one attribute X of a multi-label set for {no_X, X})")
    return DomainMap(names=wanted, label_kind=label_kind, columns=columns, binary=False)
