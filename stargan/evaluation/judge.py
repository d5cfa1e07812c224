"""How far to trust the judge: the attribute classifier's own per-label scores on real test images,
and the verdict on each target accuracy it produced.

A target accuracy ("translations to Blond_Hair the classifier calls blond") is only as good as the
classifier on that label. Plain accuracy cannot tell: 91 % of CelebA's test faces are not blond,
so a classifier that never says "blond" scores 0.91 on the attribute while being blind to it. The
verdict therefore uses the **balanced accuracy** (TPR + TNR) / 2 = (1 + J) / 2, with Youden's
J = TPR - FPR: a target accuracy measured by a judge with rates TPR/FPR moves by J per unit of true
change and sits FPR above zero, so J (not accuracy) says whether the number can rank models.
``evaluate.judge_min_accuracy`` (0.9 by default: J >= 0.8) is the floor below which a target
accuracy is flagged ``judge_ok: false`` in ``reports/eval.json``; both scores are reported.

Real images of a dataset cannot tell whether its judge reads its labels on *another* dataset's
faces (the cross-dataset targets of a jointly trained model). On synthetic data the true
counterfactual of every translation can be rendered, so the judge is also scored on those
(``judge_truth_accuracy``, stargan/evaluation/metric_accuracy.py: what a perfect generator would
get) and a target is meaningful only when that reaches the floor too.

Which real images count for a label: every test image, except for an exclusive group whose truth
is not one of its members. The judge names one hair colour by argmax among the group (as the
generator's targets set it), so for a hair-colour label only faces with exactly one of the
group's colours count (CelebA faces with grey or no listed hair colour have no right answer);
for v2 domains, only images the domain map assigns (:meth:`DomainMap.assign` >= 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

#: What ``evaluate.judge_min_accuracy`` is compared with, as reports/eval.json names it.
MEASURE = "judge_balanced_accuracy"
#: ... and, on synthetic data, also this: the judge's target accuracy on the true counterfactuals.
TRUTH_MEASURE = "judge_truth_accuracy"


@dataclass
class LabelCounts:
    """Confusion counts per label column, accumulated over batches of real images."""
    names: list[str]
    tp: Tensor = field(init=False)
    fp: Tensor = field(init=False)
    tn: Tensor = field(init=False)
    fn: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.tp, self.fp, self.tn, self.fn = (torch.zeros(len(self.names), dtype=torch.int64) for _ in range(4))

    def add(self, pred: Tensor, truth: Tensor, counts: Tensor | None = None) -> None:
        """``pred``/``truth`` [B, L] 0/1; ``counts`` [B, L] bool: which (image, label) pairs have a
        truth to be judged against (all when None)."""
        p, t = pred.detach().cpu() > 0.5, truth.detach().cpu() > 0.5
        c = torch.ones_like(p) if counts is None else counts.detach().cpu().bool()
        self.tp += (p & t & c).sum(0)
        self.fp += (p & ~t & c).sum(0)
        self.tn += (~p & ~t & c).sum(0)
        self.fn += (~p & t & c).sum(0)

    def scores(self) -> dict[str, dict]:
        """Per label: ``accuracy``, ``balanced_accuracy`` (None when the real test images hold no
        positive or no negative of the label: the judge cannot be checked on it), ``images``,
        ``positives``."""
        out = {}
        for i, name in enumerate(self.names):
            tp, fp, tn, fn = (int(v[i]) for v in (self.tp, self.fp, self.tn, self.fn))
            n, pos, neg = tp + fp + tn + fn, tp + fn, tn + fp
            out[name] = {"accuracy": (tp + tn) / n if n else None,
                         "balanced_accuracy": (tp / pos + tn / neg) / 2 if pos and neg else None,
                         "images": n, "positives": pos}
        return out


def exclusive_counts(truth: Tensor, group: Sequence[int]) -> Tensor:
    """[B, L] bool: every pair counts, except a group column of an image whose truth is not
    exactly one member of ``group`` (argmax over the group has no right answer there)."""
    counts = torch.ones(truth.shape, dtype=torch.bool)
    if len(group) > 1:
        g = torch.as_tensor(list(group))
        single = (truth.detach().cpu()[:, g] > 0.5).sum(1) == 1
        counts[:, g] = single.unsqueeze(1)
    return counts


def domain_onehot(domains: Tensor | Sequence[int], num_domains: int) -> Tensor:
    """[B] domain ids (-1 = none) -> [B, D] 0/1 (an all-zero row for -1)."""
    d = torch.as_tensor(domains, dtype=torch.int64)
    return torch.nn.functional.one_hot(d.clamp(min=0), num_domains).float() * (d >= 0).unsqueeze(1).float()


def verdict(score: dict | None, min_accuracy: float) -> tuple[float | None, float | None, bool]:
    """``(judge_accuracy, judge_balanced_accuracy, judge_ok)`` for a target whose label the judge
    scored ``score`` on real images: ok exactly when the balanced accuracy is known and
    ``>= min_accuracy``."""
    if not score:
        return None, None, False
    bal = score["balanced_accuracy"]
    return score["accuracy"], bal, bal is not None and bal >= min_accuracy
